"""A worker's memory is bounded in bytes for inputs within the published limits (issue 7, item 5:
40 legal 4096² 16-bit PNGs of ~130 KB each took the tiny worker from 1.1 to 4.4 GiB).

A real ``f2p worker --engine tiny`` process gets 40 such faces by claim check (S3). Each decodes to
64 MiB of pixels (Pillow keeps 16-bit RGB as 8-bit RGBX). The worker decodes under its decode
budget (256 MiB; a 4096² face reserves 3 x 64 MiB for the decode and its copies, so they decode
one at a time), holds faces at the engine's condition area (128² for tiny), and gives the freed
decode memory back (``inference_consumer/memory.py``). So its peak RSS while serving them
(``VmHWM``, reset with ``clear_refs`` once the worker is idle and warmed up) may exceed the idle
RSS by one face's reservation plus 64 MiB for the rest (librdkafka buffers, the engine's
activations, allocator slack): 256 MiB. Measured: +113 MiB; before the fixes +480-500 MiB (glibc
arenas of the four prefetch threads keeping freed 16 MiB blocks, and a full copy per decode).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from connectors.claim_check import face_ref
from connectors.s3 import make_s3_client
from schemas.images import decode_face_image
from schemas.records import GenerationRequest, ResultStatus
from tests.inference_consumer.conftest import publish, read_results, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
FACES = 40
SIDE = 4096
MIB = 1024 * 1024
FACE_RESERVATION = 3 * SIDE * SIDE * 4  # schemas/images.py: 3 x the decoded pixel bytes
MAX_GROWTH = FACE_RESERVATION + 64 * MIB


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


class Png16:
    """Legal 4096x4096 16-bit RGB PNGs of ~130 KB: a gradient row repeated (filter Up, so the
    rows compress to almost nothing), and a last row that differs per seed. The common part is
    compressed once; each image only compresses its last row and continues the checksum."""

    def __init__(self) -> None:
        row_len = 1 + SIDE * 6
        first = bytearray(row_len)
        for x in range(SIDE):
            v = (x * 16) % 65536
            struct.pack_into(">HHH", first, 1 + x * 6, v, (v * 3) % 65536, (v * 7) % 65536)
        prefix = bytes(first) + (b"\x02" + b"\x00" * (SIDE * 6)) * (SIDE - 2)
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        self._deflated = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
        self._adler = zlib.adler32(prefix)
        self._ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", SIDE, SIDE, 16, 2, 0, 0, 0))

    def make(self, seed: int) -> bytes:
        last = bytearray(1 + SIDE * 6)
        for x in range(0, SIDE, 7):
            struct.pack_into(">H", last, 1 + x * 6, (x * 131 + seed * 7919) % 65536)
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        tail = compressor.compress(bytes(last)) + compressor.flush()
        adler = zlib.adler32(bytes(last), self._adler)
        stream = b"\x78\xda" + self._deflated + tail + struct.pack(">I", adler)
        png = b"\x89PNG\r\n\x1a\n" + self._ihdr + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
        return png


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(rest.split()[0])
    return fields


def test_forty_4096_16_bit_pngs_stay_within_the_byte_budget(pipeline, codec, tmp_path, capsys):
    maker = Png16()
    faces = [maker.make(seed) for seed in range(FACES)]
    assert struct.unpack(">IIB", faces[0][16:25]) == (SIDE, SIDE, 16)  # IHDR: size, bit depth
    assert decode_face_image(faces[0]).size == (SIDE, SIDE)  # legal, and a valid PNG
    assert all(100_000 < len(f) < 160_000 for f in faces), [len(f) for f in faces[:3]]
    s3 = make_s3_client(pipeline)
    requests = []
    for face in faces:
        ref = face_ref(pipeline.inputs_bucket, "acme", face, "image/png")
        s3.put_object(Bucket=ref.bucket, Key=ref.key, Body=face, ContentType="image/png")
        requests.append(
            GenerationRequest.new(
                "acme", "studio portrait", ref, width=64, height=64, steps=2, true_cfg_scale=1.0
            )
        )

    suffix = pipeline.topics.results.removeprefix("f2p.results.v1")
    env = {**os.environ, "F2P_TOPIC_SUFFIX": suffix, "F2P_WORKER_GROUP_ID": "g-mem" + suffix}
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "f2p_cli", "worker", "--engine", "tiny", "--worker-id", "mem"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_until(
            lambda: proc.poll() is not None or "partitions assigned" in log_path.read_text(),
            60,
            "the tiny worker's assignment",
            step_s=0.2,
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        idle = status_kib(proc.pid)
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
        started = time.monotonic()
        publish(pipeline, codec, requests)

        def done():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            results = read_results(pipeline, codec)
            return results if len(results) >= FACES else None

        results = wait_until(done, 80, "40 results", step_s=0.5)
        elapsed = time.monotonic() - started
        peak = status_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    assert {r.request_id for r in results} == {r.request_id for r in requests}
    assert {r.status for r in results} == {ResultStatus.OK}, [r.error for r in results][:3]
    growth = (peak["VmHWM"] - idle["VmRSS"]) * 1024
    with capsys.disabled():
        print(
            f"\n40 x 4096² 16-bit PNGs ({sum(map(len, faces)) // 1024} KiB in all) on the tiny "
            f"worker in {elapsed:.1f} s: idle RSS {idle['VmRSS'] // 1024} MiB, peak "
            f"{peak['VmHWM'] // 1024} MiB (+{growth // MIB} MiB; bound +{MAX_GROWTH // MIB} MiB; "
            "issue 7 saw +3.2 GiB)"
        )
    assert growth <= MAX_GROWTH
