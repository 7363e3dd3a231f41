"""The JVM publisher of docs/PUBLISHING.md (examples/java-publisher), run as an outside team
would: after `f2p topics apply` only, it uploads a face with the AWS SDK for Java, publishes to
either lane with hand-framed Avro and reads its result; a sim worker serves it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from infra.topics import delete_topics, load_topic_specs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "java-publisher"
MAIN_CLASS = "io.f2pstream.example.PublishAndWait"


def _run(command: list[str], *, timeout: float, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def java_example() -> list[str]:
    """Build the example (offline when Maven already has everything); its `java` command."""
    mvn, java = shutil.which("mvn"), shutil.which("java")
    if mvn is None or java is None:
        pytest.skip("Maven and a JDK 17+ are needed for the Java example")
    build = [mvn, "-q", "-B", "-f", str(EXAMPLE / "pom.xml"), "package"]
    offline = _run([*build[:1], "-o", *build[1:]], timeout=600)
    if offline.returncode != 0:  # first run on this machine: fetch from Maven Central
        online = _run(build, timeout=900)
        assert online.returncode == 0, online.stdout[-3000:] + online.stderr[-3000:]
    classpath = f"{EXAMPLE / 'target' / 'classes'}{os.pathsep}{EXAMPLE / 'target' / 'lib' / '*'}"
    return [java, "-cp", classpath, MAIN_CLASS]


def _f2p(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "f2p_cli", *args], timeout=timeout, cwd=REPO, env=env)


@pytest.fixture
def private_pipeline(stack_settings, admin, unique_name, tmp_path) -> Iterator[tuple[str, Path]]:
    """`f2p topics apply` on a private topic set, admission and a sim worker on it, and the stack
    status file the example reads; everything removed afterwards. Yields (suffix, status file)."""
    suffix = "." + unique_name("java")
    env = {**os.environ, "F2P_TOPIC_SUFFIX": suffix}
    applied = _f2p("topics", "apply", "--suffix", suffix, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    status = _f2p("stack", "status", "--json", env=env)
    status_file = tmp_path / "stack.json"
    status_file.write_text(status.stdout)

    # The example publishes to the ingress topics; admission forwards to the internal lanes the
    # worker serves. Both have their own group (and transactional id) per run.
    worker_id = unique_name("java-worker")
    commands = {
        "worker": ["worker", "--engine", "sim", "--sim-time-scale", "0",
                   "--group", f"g-{worker_id}", "--worker-id", worker_id],
        "admission": ["streams", "admission", "--instance-id", f"{worker_id}-admission",
                      "--group", f"g-{worker_id}-admission"],
    }  # fmt: skip
    processes = []
    for name, args in commands.items():
        log = (tmp_path / f"{name}.log").open("w")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "f2p_cli", *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        yield suffix, status_file
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        specs = load_topic_specs(suffix=suffix)
        delete_topics(admin, [s.name for s in specs])
        registry = SchemaRegistryClient({"url": stack_settings.registry_url})
        for spec in specs:
            for permanent in (False, True):
                with contextlib.suppress(SchemaRegistryError):
                    registry.delete_subject(f"{spec.name}-value", permanent=permanent)


@pytest.mark.parametrize("lane", ["interactive", "batch"])
def test_java_example_publishes_to_either_lane_and_reads_its_result(
    java_example, private_pipeline, lane
) -> None:
    suffix, status_file = private_pipeline
    run = _run(
        [
            *java_example,
            "--stack-status", str(status_file),
            "--topic-suffix", suffix,
            "--lane", lane,
            "--width", "256",
            "--height", "256",
            "--attribute", "sku=SHIRT-001",
            "--attribute", f"lane={lane}",
            "--timeout-s", "90",
        ],
        timeout=150,
        cwd=EXAMPLE,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])

    assert out["topic"] == f"f2p.requests.{lane}{suffix}"
    assert out["face_key"].startswith("tenants/java-shop/inputs/")
    assert out["face_key"].endswith(".png")
    assert out["status"] == "OK", out
    [image] = out["images"]
    assert (image["width"], image["height"]) == (256, 256)
    assert image["uri"].startswith(
        f"s3://f2p-results/tenants/java-shop/results/{out['request_id']}/"
    )
    assert image["sha256_verified"] is True
    # GenerationResult.attributes: the request's attributes, carried through unchanged.
    assert out["attributes"] == {"sku": "SHIRT-001", "lane": lane}
