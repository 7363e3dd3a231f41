"""The client factories against the real stack: transactions, S3 conditional puts, registry."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.schema_registry import Schema

from connectors.kafka import make_consumer, make_producer, make_transactional_producer
from connectors.registry import make_registry_client
from connectors.s3 import make_s3_client, put_if_absent
from connectors.settings import load_settings
from connectors.topic_reader import read_to_end

pytestmark = pytest.mark.integration


def _read_all(settings, topic: str) -> list[bytes]:
    return [m.value() for m in read_to_end(settings, topic, timeout_s=30)]


def test_committed_transaction_is_visible_and_aborted_one_is_not(
    stack_settings, make_topic, unique_name
) -> None:
    topic = make_topic("txn")
    producer = make_transactional_producer(stack_settings, unique_name("txn-producer"))
    producer.init_transactions(10)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed")
    producer.commit_transaction(10)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted")
    producer.flush(10)  # the record is in the log, only the abort marker hides it
    producer.abort_transaction(10)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed-2")
    producer.commit_transaction(10)

    values = _read_all(stack_settings, topic)
    assert values == [b"committed", b"committed-2"]


def test_offsets_sent_in_a_transaction_are_committed_with_it(
    stack_settings, make_topic, unique_name
) -> None:
    source, sink = make_topic("src"), make_topic("sink")
    plain = make_producer(stack_settings)
    for i in range(3):
        plain.produce(source, value=f"m{i}".encode())
    assert plain.flush(10) == 0

    group = unique_name("eos-group")
    consumer = make_consumer(stack_settings, group)
    consumer.assign([TopicPartition(source, 0, 0)])
    producer = make_transactional_producer(stack_settings, unique_name("eos"))
    producer.init_transactions(10)
    seen = []
    while len(seen) < 3:
        msg = consumer.poll(5)
        assert msg is not None, "source messages did not arrive"
        seen.append(msg)
    producer.begin_transaction()
    for msg in seen:
        producer.produce(sink, value=msg.value().upper())
    producer.send_offsets_to_transaction(
        [TopicPartition(source, 0, seen[-1].offset() + 1)], consumer.consumer_group_metadata()
    )
    producer.commit_transaction(10)
    committed = consumer.committed([TopicPartition(source, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset == 3
    assert _read_all(stack_settings, sink) == [b"M0", b"M1", b"M2"]


def test_s3_put_get_and_second_conditional_put_is_refused(stack_settings, unique_name) -> None:
    s3 = make_s3_client(stack_settings)
    key = f"tests/{unique_name('obj')}.bin"
    bucket = stack_settings.inputs_bucket
    assert put_if_absent(s3, bucket, key, b"first", content_type="application/octet-stream")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"first"

    # The raw call is refused with 412; the helper reports "not written" and keeps the original.
    with pytest.raises(s3.exceptions.ClientError) as info:
        s3.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert not put_if_absent(s3, bucket, key, b"second", content_type="application/octet-stream")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"first"


def test_s3_refuses_wrong_credentials(stack_settings) -> None:
    from dataclasses import replace

    s3 = make_s3_client(replace(stack_settings, s3_secret_key="wrong"))
    with pytest.raises(s3.exceptions.ClientError) as info:
        s3.list_objects_v2(Bucket=stack_settings.inputs_bucket)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_schema_registered_is_fetched_back_by_id(stack_settings, unique_name) -> None:
    registry = make_registry_client(stack_settings)
    schema_str = json.dumps(
        {
            "type": "record",
            "name": "Probe",
            "namespace": "io.f2pstream.test",
            "fields": [{"name": "id", "type": "string"}],
        }
    )
    subject = unique_name("probe") + "-value"
    schema_id = registry.register_schema(subject, Schema(schema_str, "AVRO"))
    fetched = make_registry_client(stack_settings).get_schema(schema_id)
    assert json.loads(fetched.schema_str) == json.loads(schema_str)
    assert registry.get_latest_version(subject).schema_id == schema_id


def test_settings_resolve_from_the_running_stack_and_env(stack_settings, monkeypatch) -> None:
    monkeypatch.setenv("F2P_KAFKA_CONFIG_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("F2P_TOPIC_SUFFIX", ".t1")
    settings = load_settings()
    assert settings.bootstrap_servers == stack_settings.bootstrap_servers
    assert settings.embedded is True
    assert settings.kafka_extra == {"sasl.mechanism": "SCRAM-SHA-512"}
    assert settings.topics.results == "f2p.results.v1.t1"
    assert stack_settings.s3_secret_key not in repr(settings)
