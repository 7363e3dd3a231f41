"""Client CPU per conditional put, per S3 client the worker can use (``connectors.object_store``).

Each client writes ``n`` fresh objects of each size with ``If-None-Match: *`` and the sha256
metadata, as the worker's upload does, from one thread and from four (the worker's output pool);
CPU is this process's user + system time (``time.process_time``: every thread, obstore's Rust
runtime included), wall time is per put. The objects are deleted afterwards.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from connectors.object_store import OBJECT_STORES, make_object_store
from connectors.s3 import make_s3_client
from connectors.settings import Settings

SIZES = (4 * 1024, 200 * 1024)
THREADS = (1, 4)


def run_s3_clients(settings: Settings, n: int) -> dict[str, Any]:
    """``{client: {"<size>_<threads>": {"cpu_ms_per_put", "wall_ms_per_put"}}}``."""
    prefix = f"bench-s3/{uuid.uuid4().hex[:8]}"
    bucket = settings.results_bucket
    figures: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    try:
        for kind in OBJECT_STORES:
            store = make_object_store(settings, kind)
            per: dict[str, Any] = {}
            for size in SIZES:
                body = os.urandom(size)
                digest = hashlib.sha256(body).hexdigest()

                def put(key: str, store: Any = store, body: bytes = body, d: str = digest) -> None:
                    assert store.put_if_absent(
                        bucket, key, body, content_type="image/webp", metadata={"sha256": d}
                    )

                for i in range(5):  # connections and credentials warm
                    put(f"{prefix}/{kind}/warm-{size}-{i}")
                for threads in THREADS:
                    keys = [f"{prefix}/{kind}/{size}-{threads}-{i}" for i in range(n)]
                    wall, cpu = time.perf_counter(), time.process_time()
                    if threads == 1:
                        for key in keys:
                            put(key)
                    else:
                        with ThreadPoolExecutor(threads) as pool:
                            list(pool.map(put, keys))
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    per[f"{size // 1024}k_{threads}t"] = {
                        "cpu_ms_per_put": 1000 * cpu / n,
                        "wall_ms_per_put": 1000 * wall / n,
                    }
            figures[kind] = per
    finally:
        _delete_prefix(settings, bucket, prefix)
    figures["loadavg_after"] = os.getloadavg()
    return figures


def _delete_prefix(settings: Settings, bucket: str, prefix: str) -> None:
    s3 = make_s3_client(settings)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
