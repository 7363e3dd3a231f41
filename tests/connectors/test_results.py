"""The results reader against the real stack: read_committed, filters, follow, downloads."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from click.testing import CliRunner
from connector_helpers import ResultWriter, private_topics, suffix_of

from connectors.cli import results_cmd
from connectors.results import ResultsError, download_images, iter_results, wait_for_results
from connectors.s3 import make_s3_client
from schemas.records import (
    GenerationResult,
    ImageFormat,
    ModelRef,
    ResultError,
    ResultImage,
    ResultStatus,
    new_request_id,
    utc_now,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def private_settings(stack_settings, admin, unique_name):
    with private_topics(stack_settings, admin, unique_name) as settings:
        yield settings


def _result(tenant: str, status: ResultStatus, images=(), error=None) -> GenerationResult:
    now = utc_now()
    return GenerationResult(
        request_id=new_request_id(), tenant_id=tenant, status=status, worker_id="w-test",
        model=ModelRef(name="sim", revision="0"), submitted_at=now, completed_at=now,
        images=images, error=error,
    )  # fmt: skip


def _stored_image(settings, tenant: str, request_id: str, body: bytes) -> ResultImage:
    key = f"tenants/{tenant}/results/{request_id}/0.webp"
    make_s3_client(settings).put_object(Bucket=settings.results_bucket, Key=key, Body=body)
    return ResultImage(
        uri=f"s3://{settings.results_bucket}/{key}", width=64, height=64,
        format=ImageFormat.WEBP, size_bytes=len(body), sha256=hashlib.sha256(body).hexdigest(),
    )  # fmt: skip


def test_reader_sees_committed_results_only_and_filters(private_settings, unique_name) -> None:
    acme, other = unique_name("acme"), unique_name("other")
    writer = ResultWriter(private_settings, unique_name("worker"))
    ok = _result(acme, ResultStatus.OK)
    failed = _result(acme, ResultStatus.FAILED, error=ResultError(code="NOT_AN_IMAGE", message="x"))
    expired = _result(other, ResultStatus.EXPIRED)
    aborted = _result(acme, ResultStatus.OK)
    writer.write([ok, failed])
    writer.write([aborted], commit=False)
    writer.write([expired])

    everything = list(iter_results(private_settings, timeout_s=30))
    assert {r.request_id for r in everything} == {ok.request_id, failed.request_id,
                                                  expired.request_id}  # fmt: skip
    by_id = {r.request_id: r for r in everything}
    assert by_id[failed.request_id].error == ResultError(code="NOT_AN_IMAGE", message="x")

    def ids(**filters) -> set[str]:
        return {r.request_id for r in iter_results(private_settings, timeout_s=30, **filters)}

    assert ids(tenant=acme) == {ok.request_id, failed.request_id}
    assert ids(statuses=["expired"]) == {expired.request_id}
    assert ids(tenant=acme, statuses=[ResultStatus.OK, "FAILED"]) == {
        ok.request_id, failed.request_id,
    }  # fmt: skip
    assert ids(request_ids=[failed.request_id, aborted.request_id]) == {failed.request_id}
    later = utc_now()
    assert ids(since=later) == set()


def test_follow_reads_results_committed_after_it_started(private_settings, unique_name) -> None:
    tenant = unique_name("acme")
    writer = ResultWriter(private_settings, unique_name("worker"))
    first, second = _result(tenant, ResultStatus.OK), _result(tenant, ResultStatus.FAILED)
    writer.write([first])
    results = iter_results(
        private_settings, follow=True, request_ids=[first.request_id, second.request_id],
        idle_timeout_s=30,
    )  # fmt: skip
    assert next(results).request_id == first.request_id
    writer.write([second])  # only written once the reader has consumed the first
    assert next(results).request_id == second.request_id
    assert list(results) == []  # both seen: the iteration ends by itself

    third = _result(tenant, ResultStatus.OK)
    writer.write([third])
    found = wait_for_results(private_settings, [third.request_id], timeout_s=30)
    assert list(found) == [third.request_id] and found[third.request_id].status is ResultStatus.OK


def test_download_fetches_images_and_checks_their_hash(
    private_settings, unique_name, tmp_path
) -> None:
    tenant = unique_name("acme")
    request_id = new_request_id()
    body = b"RIFF....WEBPVP8 fake image bytes" * 10
    image = _stored_image(private_settings, tenant, request_id, body)
    result = _result(tenant, ResultStatus.OK, images=(image,))
    result = dataclasses.replace(result, request_id=request_id)
    s3 = make_s3_client(private_settings)

    (path,) = download_images(s3, result, tmp_path)
    assert path == tmp_path / request_id / "0.webp" and path.read_bytes() == body

    bad = dataclasses.replace(result, images=(dataclasses.replace(image, sha256="0" * 64),))
    with pytest.raises(ResultsError, match="SHA-256"):
        download_images(s3, bad, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_results_cli_prints_json_lines_and_downloads(
    private_settings, unique_name, tmp_path
) -> None:
    tenant = unique_name("acme")
    writer = ResultWriter(private_settings, unique_name("worker"))
    request_id = new_request_id()
    image = _stored_image(private_settings, tenant, request_id, b"image-bytes" * 5)
    ok = dataclasses.replace(_result(tenant, "OK", images=(image,)), request_id=request_id)
    writer.write([ok, _result(tenant, ResultStatus.FAILED), _result("someone-else", "OK")])

    runner = CliRunner()
    env = {"F2P_TOPIC_SUFFIX": suffix_of(private_settings)}
    args = ["--tenant", tenant, "--status", "ok", "--json", "--download", str(tmp_path)]
    out = runner.invoke(results_cmd, args, env=env)
    assert out.exit_code == 0, out.output
    (line,) = out.stdout.strip().splitlines()
    payload = json.loads(line)
    assert payload["request_id"] == request_id and payload["status"] == "OK"
    assert payload["files"] == [str(tmp_path / request_id / "0.webp")]

    human = runner.invoke(results_cmd, ["--tenant", tenant], env=env)
    assert human.exit_code == 0, human.output
    assert human.stdout.count(tenant) == 2 and "FAILED" in human.stdout
