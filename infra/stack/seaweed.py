"""SeaweedFS in ``weed mini`` mode: master, volume, filer and the S3 gateway in one process.

Access is by SigV4 keys from an identities file; the pipeline's buckets are created after the
gateway is up (idempotently). Every port is set explicitly: ``weed mini`` otherwise binds
fixed defaults (admin 23646, iceberg 8181, ...) that collide with other services.
"""

from __future__ import annotations

import json

import boto3
from botocore.config import Config

from infra.stack.component import Component
from infra.stack.state import S3Credentials, load_or_create_credentials


class SeaweedS3(Component):
    """The S3 component."""

    name = "s3"

    @property
    def credentials(self) -> S3Credentials:
        return load_or_create_credentials(self.config.state_dir / "s3-credentials.json")

    def ports(self) -> dict[str, int]:
        ports = {"s3": self.config.ports.s3, **self.config.ports.seaweed_internal()}
        grpc = {f"{role}-grpc": port + 10000 for role, port in ports.items()}
        grpc.pop("metrics-grpc")
        grpc.pop("iceberg-grpc")
        grpc.pop("lance-grpc")
        return {**ports, **grpc}

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.s3}"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        creds = self.credentials
        identities = {
            "identities": [
                {
                    "name": "f2p",
                    "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.data_dir / "identities.json").write_text(json.dumps(identities))

    def command(self) -> list[str]:
        assert self.artifacts is not None
        p = self.config.ports
        return [
            str(self.artifacts.weed),
            "mini",
            f"-dir={self.data_dir / 'store'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p.s3}",
            f"-s3.config={self.data_dir / 'identities.json'}",
            f"-master.port={p.seaweed_master}",
            f"-volume.port={p.seaweed_volume}",
            f"-filer.port={p.seaweed_filer}",
            f"-webdav.port={p.seaweed_webdav}",
            f"-admin.port={p.seaweed_admin}",
            f"-s3.port.iceberg={p.seaweed_iceberg}",
            f"-s3.port.lance={p.seaweed_lance}",
            f"-metricsPort={p.seaweed_metrics}",
            # No phoning home from a test machine.
            "-master.telemetry=false",
            f"-bucket={','.join(self.config.buckets)}",
        ]

    def client(self):
        """A boto3 S3 client for the probe (path-style: no DNS for bucket subdomains)."""
        creds = self.credentials
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint(),
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=1,
                read_timeout=3,
            ),
        )

    def probe(self) -> None:
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in self.config.buckets:
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)
            s3.head_bucket(Bucket=bucket)

    def extra(self) -> dict[str, str]:
        creds = self.credentials
        return {
            "access_key": creds.access_key,
            "secret_key": creds.secret_key,
            "region": "us-east-1",
            "buckets": ",".join(self.config.buckets),
        }
