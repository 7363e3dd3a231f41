"""Publish throughput: the SDK against a naive publisher, side by side, on the real stack.

Three runs, each on private topics and its own tenant prefix (both deleted afterwards):

- ``sdk_distinct_faces``: ``Publisher.submit`` with a different small face per request, so each
  one is decoded and uploaded (claim check) before its event is produced;
- ``sdk_repeated_face``: the same face for every request: one upload, then none;
- ``naive_distinct_faces``: the same validation and encoding, then for each request a blocking
  S3 PUT, ``produce`` and ``flush`` (one request at a time: the baseline of DESIGN.md).

Run with ``python -m benchmarks.publish [--n 2000]``; ``run_publish_bench`` is the library entry.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import uuid
from typing import Any

import click
from PIL import Image
from rich.console import Console
from rich.table import Table

from connectors.kafka import make_admin, make_producer
from connectors.publisher import Publisher
from connectors.s3 import make_s3_client
from connectors.settings import Settings, load_settings
from infra.topics import apply_topics, load_topic_specs
from schemas.images import make_sample_face
from schemas.records import FaceImageRef


def distinct_faces(n: int, size: int = 128) -> list[bytes]:
    """``n`` different small PNG faces (the sample face of ``seed=i``, one pixel set to ``i``)."""
    faces = []
    for i in range(n):
        image = Image.open(io.BytesIO(make_sample_face(size, seed=i))).convert("RGB")
        image.putpixel((0, 0), (i % 256, (i // 256) % 256, (i // 65536) % 256))
        out = io.BytesIO()
        image.save(out, format="PNG")
        faces.append(out.getvalue())
    return faces


def _figures(requests: int, seconds: float, uploads: int, failed: int = 0) -> dict[str, Any]:
    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 1) if seconds > 0 else 0.0,
        "face_uploads": uploads,
        "failed": failed,
    }


def _sdk_run(settings: Settings, tenant: str, faces: list[bytes], n: int) -> dict[str, Any]:
    """``n`` submits through one Publisher, faces rotating over ``faces``; timed to last ack."""
    with Publisher(settings) as publisher:
        publisher.submit(tenant_id=tenant, prompt="warm-up", face=make_sample_face(64)).result()
        started = time.perf_counter()
        futures = [
            publisher.submit(
                tenant_id=tenant, prompt="bench", face=faces[i % len(faces)], steps=8, seed=i
            )
            for i in range(n)
        ]
        publisher.flush(120)
        seconds = time.perf_counter() - started
    failed = sum(1 for f in futures if f.exception() is not None)
    uploads = sum(f.result().face_uploaded for f in futures if f.exception() is None)
    return _figures(n - failed, seconds, uploads, failed)


def _naive_run(settings: Settings, tenant: str, faces: list[bytes], n: int) -> dict[str, Any]:
    """Validate and encode like the SDK, then upload, produce and flush one request at a time."""
    s3 = make_s3_client(settings)
    producer = make_producer(settings, client_id="f2p-naive-publisher")
    with Publisher(settings) as publisher:  # for prepare() only; its clients stay idle
        publisher.submit(tenant_id=tenant, prompt="warm-up", face=make_sample_face(64)).result()
        errors: list[Any] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        started = time.perf_counter()
        for i in range(n):
            face = faces[i % len(faces)]
            prepared = publisher.prepare(
                tenant_id=tenant, prompt="bench", face=face, steps=8, seed=i
            )
            ref = prepared.request.face
            # The naive loop always uploads: the prepared request names an S3 claim check.
            assert isinstance(ref, FaceImageRef)
            s3.put_object(Bucket=ref.bucket, Key=ref.key, Body=face, ContentType=ref.content_type)
            producer.produce(
                prepared.topic, value=prepared.value, key=prepared.request.request_id.encode(),
                on_delivery=on_delivery,
            )  # fmt: skip
            producer.flush(30)
        seconds = time.perf_counter() - started
    return _figures(n - len(errors), seconds, n, len(errors))


def _cleanup(settings: Settings, topics: list[str], prefixes: list[str]) -> None:
    admin = make_admin(settings)
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        future.result()
    s3 = make_s3_client(settings)
    for prefix in prefixes:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=settings.inputs_bucket, Prefix=prefix
        )
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=settings.inputs_bucket, Delete={"Objects": keys})


def run_publish_bench(
    settings: Settings, n: int = 2000, *, naive_n: int | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Measure publish throughput (requests/s, to the last delivery) and print a table.

    ``naive_n`` (default ``n``) sizes the naive run, which is an order of magnitude slower.
    """
    naive_n = n if naive_n is None else naive_n
    run = uuid.uuid4().hex[:8]
    suffix = f".bench-{run}"
    specs = [s for s in load_topic_specs(suffix=suffix) if s.name.startswith("f2p.requests.")]
    apply_topics(make_admin(settings), specs)
    bench = dataclasses.replace(settings, topics=settings.topics.with_suffix(suffix))
    tenants = {name: f"bench-{run}-{name}" for name in ("distinct", "repeated", "naive")}
    faces = distinct_faces(max(n, naive_n))
    try:
        results: dict[str, Any] = {
            "n": n,
            "sdk_distinct_faces": _sdk_run(bench, tenants["distinct"], faces[:n], n),
            "sdk_repeated_face": _sdk_run(bench, tenants["repeated"], faces[:1], n),
            "naive_distinct_faces": _naive_run(bench, tenants["naive"], faces[:naive_n], naive_n),
        }
    finally:
        _cleanup(settings, [s.name for s in specs], [f"tenants/{t}/" for t in tenants.values()])
    naive_rate = results["naive_distinct_faces"]["requests_per_s"]
    sdk_rate = results["sdk_distinct_faces"]["requests_per_s"]
    results["speedup_distinct_faces"] = round(sdk_rate / naive_rate, 1) if naive_rate else None
    if not quiet:
        _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    table = Table(title=f"publish throughput ({results['n']} requests, claim check to S3)")
    for column in ("publisher", "requests", "seconds", "requests/s", "face uploads", "failed"):
        first = column == "publisher"
        table.add_column(column, justify="left" if first else "right", no_wrap=first)
    for name in ("sdk_distinct_faces", "sdk_repeated_face", "naive_distinct_faces"):
        row = results[name]
        table.add_row(
            name, str(row["requests"]), f"{row['seconds']:.2f}", f"{row['requests_per_s']:.0f}",
            str(row["face_uploads"]), str(row["failed"]),
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"SDK vs naive (distinct faces): {results['speedup_distinct_faces']}x")


@click.command("publish")
@click.option("--n", default=2000, show_default=True, help="Requests per SDK run.")
@click.option("--naive-n", type=int, help="Requests of the naive run (default: --n).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def publish_bench_cmd(n: int, naive_n: int | None, as_json: bool) -> None:
    """Publish throughput of the SDK and of a naive publisher, side by side."""
    results = run_publish_bench(load_settings(), n, naive_n=naive_n, quiet=as_json)
    if as_json:
        click.echo(json.dumps(results))


if __name__ == "__main__":
    publish_bench_cmd()
