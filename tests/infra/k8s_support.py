"""Rendering and validating infra/k8s offline: kustomize, the Kubernetes OpenAPI schemas
(kubernetes-validate) and the CRD schemas committed under infra/k8s/crds.

CRD schemas are made strict before use: the API server silently prunes unknown fields of a
custom resource, so a misspelt field (``maxReplica``) would deploy as if absent; here it fails.
"""

from __future__ import annotations

import copy
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
CRDS = K8S / "crds"
KUBERNETES_VERSION = "1.33"
OVERLAYS = ("dev", "production")


def kustomize_binary() -> Path:
    path = Path(os.environ.get("F2P_KUSTOMIZE", REPO / ".tools" / "bin" / "kustomize"))
    assert path.exists(), f"{path} is missing: run `make tools` (builds kustomize from Go)"
    return path


def build(overlay: str) -> list[dict[str, Any]]:
    """``kustomize build infra/k8s/overlays/<overlay>`` as a list of resources."""
    out = subprocess.run(
        [str(kustomize_binary()), "build", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _strict(schema: Any) -> Any:
    """Forbid unknown properties where the schema lists them; allow null where nullable."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        if schema.get("nullable") and "type" in schema:
            schema["type"] = [schema["type"], "null"]
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → strict JSON schema, from every committed CRD."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            raw = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            # metadata is validated by the API server's ObjectMeta, not the CRD schema.
            raw.get("properties", {}).pop("metadata", None)
            schemas[(f"{group}/{version['name']}", kind)] = _strict(raw)
    return schemas


def validate(resource: dict[str, Any]) -> None:
    """Raise (jsonschema / kubernetes-validate ValidationError) if ``resource`` is invalid."""
    key = (resource["apiVersion"], resource["kind"])
    schema = crd_schemas().get(key)
    if schema is not None:
        body = {k: v for k, v in resource.items() if k != "metadata"}
        jsonschema.Draft7Validator(schema).validate(body)
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": resource["metadata"]},
            KUBERNETES_VERSION,
            strict=True,
        )  # the metadata part, against ObjectMeta
        return
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def find(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(resource: dict[str, Any], name: str) -> dict[str, Any]:
    containers = resource["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def env(container_spec: dict[str, Any]) -> dict[str, Any]:
    """name → value (or valueFrom) of a container's env."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_spec.get("env", [])}
