"""Operations: Prometheus metrics over HTTP (`metrics_listen`): a single node's produce,
consume and fsync figures, and in a 3-node cluster the Raft state per node (every partition
led once); and JSON logs (`log_format = "json"`)."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rillet import batch
from rillet.api.v1 import admin_pb2, log_pb2
from tests.integration.conftest import FAST_RAFT_ENV, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def scrape(port: int, host: str = "127.0.0.1") -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                        float]:
    """Every sample of the node's /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_a_node_counts_what_it_produces_serves_and_fsyncs(broker_factory, connect) -> None:
    port = free_port()
    node = broker_factory(env={"RILLET_METRICS_LISTEN": f"127.0.0.1:{port}"})
    async with connect(node) as s:
        await s.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="m"))
        call = s.produce.Produce()
        for i in range(3):
            await call.write(log_pb2.ProduceRequest(topic="m", batch=batch.encode(
                [f"{i}-{j}".encode() for j in range(10)], timestamps_ms=[1] * 10)))
        answers = [await call.read() for _ in range(3)]
        await call.done_writing()
        assert [a.base_offset for a in answers] == [0, 10, 20]
        n = 0
        async for resp in s.replay.Replay(log_pb2.ReplayRequest(topic="m")):
            n += sum(h.record_count for pd in resp.partitions
                     for h, _ in batch.iter_batches(pd.batches))
        assert n == 30
    m = scrape(port)
    topic = (("topic", "m"),)
    assert m[("rillet_produce_records_total", topic)] == 30
    assert m[("rillet_produce_bytes_total", topic)] > 30 * 3
    assert m[("rillet_produce_latency_seconds_count", (("acks", "all"),))] == 3
    assert m[("rillet_consume_records_total", topic)] == 30
    assert m[("rillet_fsync_seconds_count", ())] >= 1
    assert m[("rillet_partitions_led", ())] == 1
    assert m[("rillet_partition_high_watermark", (("partition", "0"), ("topic", "m")))] == 30


async def test_in_a_cluster_every_partition_is_led_by_exactly_one_node(cluster_factory) -> None:
    ports = {i: free_port() for i in range(3)}
    cluster = await cluster_factory(3, env=FAST_RAFT_ENV, node_env={
        i: {"RILLET_METRICS_LISTEN": f"127.0.0.1:{p}"} for i, p in ports.items()})
    await cluster.create_topic("cm", partitions=6)

    async def led_once() -> bool | None:
        scraped = [scrape(p) for p in ports.values()]
        hosted = [m[("rillet_partitions_hosted", ())] for m in scraped]
        led = sum(m[("rillet_partitions_led", ())] for m in scraped)
        return True if hosted == [6.0, 6.0, 6.0] and led == 6 else None
    await cluster.poll(led_once, "6 partitions hosted everywhere and led once in all", 30.0)


def test_json_logs_name_the_node_on_every_line(broker_factory) -> None:
    node = broker_factory(node_id=4, env={"RILLET_LOG_FORMAT": "json"})
    node.stop()
    lines = [ln for ln in node.log_text().splitlines() if ln.startswith("{")]
    assert lines, node.log_text()[-2000:]
    docs = [json.loads(ln) for ln in lines]
    assert all(d["node"] == 4 for d in docs)
    assert any("listening on" in d["msg"] for d in docs)
    assert any(d["msg"] == "node 4 stopped" for d in docs)
