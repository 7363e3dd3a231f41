"""The project's partitioner: where a request_id lives, whoever produced it.

Kafka's murmur2 (the Java client's default, librdkafka's ``murmur2_random``) on the request_id
bytes, modulo the partition count. Admission computes the partition itself and produces to it
explicitly, so the internal topics are partitioned by request_id no matter which client or
partitioner an upstream system used.
"""

from __future__ import annotations


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as an unsigned 32-bit int."""
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    end = len(data) & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = len(data) & 3
    if extra == 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(request_id: str, partitions: int) -> int:
    """The partition of ``request_id`` in a topic of ``partitions`` partitions (as Kafka's
    default partitioner would choose for it as the key)."""
    return (murmur2(request_id.encode()) & 0x7FFFFFFF) % partitions
