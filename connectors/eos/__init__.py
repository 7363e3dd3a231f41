"""The exactly-once processing runtime shared by the inference worker and admission.

One consumer-group member reads input partitions, hands each message to a ``Handler`` and writes
what the handler completes — output records plus the input offsets — in Kafka transactions
(KIP-98/KIP-447), after librdkafka's ``examples/transactions.c`` and Quix Streams' checkpoint:

* ``offsets.py``    per-partition offset bookkeeping; done offsets above the commit point travel
                    in the commit's metadata, so a redelivery after a crash is recognised without
                    any state topic;
* ``partition.py``  one state object per assigned partition (generation, phase, offsets, pause);
* ``producer.py``   the transactional producer and librdkafka's three error bins;
* ``checkpoint.py`` one commit cycle: completions + offsets in one transaction;
* ``loop.py``       the poll loop: intake, rebalancing, restore, backpressure, commit cadence;
* ``records.py``    what flows between a handler and the loop.

The consumer and producer are injected (factories), so the loop runs against the stub clients
of ``tests/connectors/eos_stub.py`` in unit tests and against the real broker elsewhere.
"""
