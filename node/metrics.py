"""Prometheus metrics of one node, served over HTTP when ``metrics_listen`` is set.

Each node has its own ``CollectorRegistry`` (not the library's global one), so several nodes in
one process (tests) never share counters. Hot-path updates are a label lookup and an add; the
Raft and partition gauges are computed only when Prometheus scrapes (``_StateCollector``), so
they cost nothing between scrapes. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
_FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 1.0)

PartitionState = tuple[str, int, bool, int, int, int]
"""(topic, partition, is leader, Raft term, high watermark, commit lag in entries)."""


class _StateCollector(Collector):
    """Raft and partition state, read from the node at scrape time."""

    def __init__(self, states: Callable[[], list[PartitionState]],
                 under_replicated: Callable[[], int]) -> None:
        self.states = states
        self.under_replicated = under_replicated

    def collect(self) -> Iterator[Metric]:
        states = self.states()
        leader = GaugeMetricFamily("rillet_partition_leader",
                                   "1 if this node leads the partition, else 0",
                                   labels=["topic", "partition"])
        term = GaugeMetricFamily("rillet_partition_raft_term",
                                 "Raft term of this node's replica", labels=["topic", "partition"])
        hw = GaugeMetricFamily("rillet_partition_high_watermark",
                               "High watermark (offset after the last committed record) here",
                               labels=["topic", "partition"])
        lag = GaugeMetricFamily("rillet_partition_commit_lag_entries",
                                "Raft entries known committed but not yet applied here",
                                labels=["topic", "partition"])
        for topic, part, is_leader, raft_term, high, commit_lag in states:
            labels = [topic, str(part)]
            leader.add_metric(labels, 1.0 if is_leader else 0.0)
            term.add_metric(labels, float(raft_term))
            hw.add_metric(labels, float(high))
            lag.add_metric(labels, float(commit_lag))
        yield leader
        yield term
        yield hw
        yield lag
        yield GaugeMetricFamily("rillet_partitions_hosted",
                                "Partition replicas on this node", value=float(len(states)))
        yield GaugeMetricFamily("rillet_partitions_led", "Partitions this node leads",
                                value=float(sum(1 for s in states if s[2])))
        yield GaugeMetricFamily(
            "rillet_under_replicated_partitions",
            "Partitions led here with a replica that is behind the commit index",
            value=float(self.under_replicated()))


class NodeMetrics:
    """The node's metrics; servicers and storage call the ``record_*`` methods."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.produce_records = Counter(
            "rillet_produce_records", "Records accepted by produce requests on this node",
            ["topic"], registry=r)
        self.produce_bytes = Counter(
            "rillet_produce_bytes", "Batch bytes accepted by produce requests on this node",
            ["topic"], registry=r)
        self.produce_errors = Counter(
            "rillet_produce_errors", "Produce requests answered with an error", ["topic"],
            registry=r)
        self.produce_latency = Histogram(
            "rillet_produce_latency_seconds",
            "From reading a produce request to answering it, by acks level", ["acks"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.consume_records = Counter(
            "rillet_consume_records", "Records sent to consumers and replays", ["topic"],
            registry=r)
        self.consume_bytes = Counter(
            "rillet_consume_bytes", "Batch bytes sent to consumers and replays", ["topic"],
            registry=r)
        self.fsync_seconds = Histogram(
            "rillet_fsync_seconds",
            "Duration of one group-commit round (every log flushed in it, one worker call)",
            buckets=_FSYNC_BUCKETS, registry=r)
        self.group_lag_offsets = Gauge(
            "rillet_group_lag_offsets",
            "Consumer group lag: high watermark minus committed offset (coordinator only)",
            ["group", "topic", "partition"], registry=r)
        self.group_lag_seconds = Gauge(
            "rillet_group_lag_seconds",
            "Consumer group lag: age of the oldest unconsumed record (coordinator only)",
            ["group", "topic", "partition"], registry=r)
        self.group_members = Gauge(
            "rillet_group_members", "Members of a consumer group (coordinator only)",
            ["group"], registry=r)
        self._group_series: dict[str, set[tuple[str, str]]] = {}
        self._server: Any = None

    def watch_state(self, states: Callable[[], list[PartitionState]],
                    under_replicated: Callable[[], int]) -> None:
        """Report partition and Raft state computed by these callables at scrape time."""
        self.registry.register(_StateCollector(states, under_replicated))

    def record_produce(self, topic: str, records: int, nbytes: int) -> None:
        self.produce_records.labels(topic).inc(records)
        self.produce_bytes.labels(topic).inc(nbytes)

    def record_consume(self, topic: str, records: int, nbytes: int) -> None:
        self.consume_records.labels(topic).inc(records)
        self.consume_bytes.labels(topic).inc(nbytes)

    def record_group(self, describe: Any) -> None:
        """Set a group's gauges from a DescribeGroupResponse (duck-typed: no proto import)."""
        group = describe.group
        self.group_members.labels(group).set(len(describe.members))
        seen = set()
        for p in describe.partitions:
            key = (p.topic, str(p.partition))
            seen.add(key)
            self.group_lag_offsets.labels(group, *key).set(p.lag_offsets)
            self.group_lag_seconds.labels(group, *key).set(p.lag_ms / 1000.0)
        for key in self._group_series.get(group, set()) - seen:
            self._remove_series(group, key)
        self._group_series[group] = seen

    def _remove_series(self, group: str, key: tuple[str, str]) -> None:
        for gauge in (self.group_lag_offsets, self.group_lag_seconds):
            try:
                gauge.remove(group, *key)
            except KeyError:
                pass

    def forget_group(self, group: str) -> None:
        """A deleted group: drop its series."""
        for key in self._group_series.pop(group, set()):
            self._remove_series(group, key)
        try:
            self.group_members.remove(group)
        except KeyError:
            pass

    def forget_groups(self) -> None:
        """This node stopped coordinating: its group series would only go stale."""
        for group in list(self._group_series):
            self.forget_group(group)

    def start_server(self, listen: str) -> int:
        """Serve /metrics on ``listen`` (HOST:PORT) from a daemon thread; returns the port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
