"""``f2p publish`` against the real stack: bulk load, JSON lines, refusals that send nothing."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest
from click.testing import CliRunner
from connector_helpers import (
    IndependentReader,
    cli_env,
    lane_end_offsets,
    list_keys,
    private_topics,
    read_requests,
    run_f2p,
    suffix_of,
)

from connectors.cli import publish_cmd
from connectors.s3 import make_s3_client
from schemas.images import make_sample_face

pytestmark = pytest.mark.integration


@pytest.fixture
def private_settings(stack_settings, admin, unique_name):
    with private_topics(stack_settings, admin, unique_name) as settings:
        yield settings


def _invoke(settings, args: list[str]):
    runner = CliRunner()
    return runner.invoke(publish_cmd, args, env={"F2P_TOPIC_SUFFIX": suffix_of(settings)})


def test_1000_requests_published_by_the_cli_decode_with_an_independent_reader(
    private_settings, unique_name
) -> None:
    tenant = unique_name("load")
    done = run_f2p(
        ["publish", "--count", "1000", "--tenant", tenant, "--steps", "8", "--width", "512",
         "--height", "512", "--attr", "campaign=spring", "--json"],
        cli_env(private_settings),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sent"] == summary["delivered"] == 1000 and summary["failed"] == {}
    published = summary["request_ids"]
    assert len(set(published)) == 1000

    reader = IndependentReader(private_settings)
    messages = read_requests(private_settings)
    records = [reader.decode(m.value()) for m in messages]
    assert len(records) == 1000
    assert Counter(str(r["request_id"]) for r in records) == Counter(published)
    assert [m.key().decode() for m in messages] == [str(r["request_id"]) for r in records]
    assert {r["tenant_id"] for r in records} == {tenant}
    assert {(r["params"]["steps"], r["params"]["width"]) for r in records} == {(8, 512)}
    assert all(r["attributes"] == {"campaign": "spring"} for r in records)
    assert {r["face"]["key"] for r in records} == {  # one sample face, stored once
        f"tenants/{tenant}/inputs/{records[0]['face']['sha256']}.png"
    }
    s3 = make_s3_client(private_settings)
    assert len(list_keys(s3, private_settings.inputs_bucket, f"tenants/{tenant}/")) == 1


def test_invalid_cli_requests_exit_nonzero_naming_the_field_and_send_nothing(
    private_settings, unique_name, tmp_path
) -> None:
    tenant = unique_name("shop")
    face = tmp_path / "face.png"
    face.write_bytes(make_sample_face(seed=11))
    not_image = tmp_path / "face.txt"
    not_image.write_text("hello, I am not an image\n" * 20)
    base = ["--face", str(face), "--tenant", tenant, "--prompt", "studio photo"]
    cases = [
        # (args, exit code, text in output)
        ([*base, "--request-id", "1234"], 1, "request_id:"),
        ([*base, "--steps", "500"], 1, "params.steps: must be between 1 and 100"),
        ([*base, "--width", "8192"], 1, "params.width: must be between 64 and 2048"),
        ([*base, "--prompt", "x" * 5000], 1, "prompt: must be at most 2000 characters"),
        (["--face", str(not_image), "--tenant", tenant, "--prompt", "p"], 1, "face: "),
        (["--face", str(tmp_path / "missing.png"), "--tenant", tenant, "--prompt", "p"], 1,
         "face: cannot read"),
        (["--face", str(face), "--tenant", "NOT A TENANT", "--prompt", "p"], 1, "tenant_id:"),
        (["--face", str(face), "--tenant", tenant], 1, "prompt: is required"),
        ([*base, "--steps", "many"], 2, "'many' is not a valid integer"),
        ([*base, "--count", "3"], 2, "exactly one of"),
        ([*base, "--attr", "novalue"], 2, "KEY=VALUE"),
    ]  # fmt: skip
    before = lane_end_offsets(private_settings)
    for args, code, text in cases:
        result = _invoke(private_settings, args)
        assert result.exit_code == code, (args[-2:], result.output)
        assert text in result.output, (args[-2:], result.output)
    assert lane_end_offsets(private_settings) == before
    s3 = make_s3_client(private_settings)
    assert list_keys(s3, private_settings.inputs_bucket, f"tenants/{tenant}/") == set()


def test_jsonl_file_is_validated_whole_before_anything_is_sent(
    private_settings, unique_name, tmp_path
) -> None:
    tenant = unique_name("shop")
    (tmp_path / "a.png").write_bytes(make_sample_face(seed=21))
    (tmp_path / "b.png").write_bytes(make_sample_face(seed=22))
    good = [
        {"face": "a.png", "prompt": "red dress", "request_id": str(uuid.uuid4())},
        {"face": "b.png", "prompt": "blue suit", "lane": "interactive", "steps": 8},
        {"face": "a.png", "prompt": "green coat", "attributes": {"sku": "G-7"}, "deadline_s": 600},
    ]
    bad = [*good, {"face": "b.png", "prompt": "tiny", "width": 100}]
    bad_file, good_file = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    bad_file.write_text("\n".join(json.dumps(line) for line in bad) + "\n")
    good_file.write_text("\n".join(json.dumps(line) for line in good) + "\n\n")

    refused = _invoke(private_settings, ["--from-jsonl", str(bad_file), "--tenant", tenant])
    assert refused.exit_code == 1
    assert "line 4: params.width: must be a multiple of 16" in refused.output
    assert read_requests(private_settings) == []
    s3 = make_s3_client(private_settings)
    assert list_keys(s3, private_settings.inputs_bucket, f"tenants/{tenant}/") == set()

    sent = _invoke(private_settings, ["--from-jsonl", str(good_file), "--tenant", tenant, "--json"])
    assert sent.exit_code == 0, sent.output
    summary = json.loads(sent.stdout)
    assert summary["delivered"] == 3 and summary["request_ids"][0] == good[0]["request_id"]
    reader = IndependentReader(private_settings)
    records = {str(r["request_id"]): r for r in map(reader.decode, (
        m.value() for m in read_requests(private_settings)))}  # fmt: skip
    assert set(records) == set(summary["request_ids"])
    third = records[summary["request_ids"][2]]
    assert third["attributes"] == {"sku": "G-7"} and third["deadline"] is not None
    assert records[summary["request_ids"][1]]["lane"] == "INTERACTIVE"
    assert len(list_keys(s3, private_settings.inputs_bucket, f"tenants/{tenant}/")) == 2


def test_duplicate_fraction_resends_the_same_request_ids(private_settings, unique_name) -> None:
    tenant = unique_name("chaos")
    result = _invoke(
        private_settings,
        ["--count", "40", "--tenant", tenant, "--duplicate-fraction", "0.25",
         "--distinct-faces", "3", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["duplicates"]) == (50, 10)
    keys = Counter(m.key().decode() for m in read_requests(private_settings))
    assert sum(keys.values()) == 50 and len(keys) == 40
    assert set(keys) == set(summary["request_ids"])
    assert sorted(keys.values()).count(2) == 10
