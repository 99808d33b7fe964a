"""The `rillet` command line: serve a node, manage topics, produce, consume, replay, inspect
the cluster and consumer groups, bench.

Every client command takes --bootstrap (env RILLET_BOOTSTRAP) and --timeout, the deadline for
reaching the cluster. Any failure prints one line, `rillet: error: <reason>`, on stderr and exits
1 (2 for bad usage, 130 after Ctrl-C); data goes to stdout, progress and counts to stderr.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import importlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NoReturn, TypeVar

import click
import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rillet.api.v1 import admin_pb2, admin_pb2_grpc
from rillet.client import Admin, Consumer, Producer, Replay, Timestamp
from rillet.client.admin import config_dict
from rillet.client.bench import bench_consume, bench_produce
from rillet.client.connection import (
    DEFAULT_BOOTSTRAP,
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TOKEN,
    ChannelPool,
    Credentials,
    describe,
    fetch_metadata,
    make_stub,
    parse_bootstrap,
)
from rillet.client.consumer import PositionSpec, to_position
from rillet.client.errors import (
    ClusterUnreachableError,
    RilletError,
    TopicExistsError,
    UnavailableError,
    UnknownTopicError,
    from_rpc_error,
)
from rillet.client.group import GroupConsumer, TopicPartition
from rillet.client.metadata import ClusterMetadata
from rillet.client.records import RecordBatch

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def fail(reason: str, code: int = 1) -> NoReturn:
    """One line on stderr and the exit code: how every command (rillet.acl_cli too) fails."""
    click.echo(f"rillet: error: {reason}", err=True)
    sys.exit(code)


def run_command(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; turn every expected failure into one line and an exit code."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # Downstream (e.g. `| head`) went away: not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")
        finally:
            sys.exit(0)
    except (RilletError, ValueError, OSError) as exc:
        fail(describe(exc))


_CREDENTIALS_KEY = "rillet.credentials"


def _store_credential(ctx: click.Context, param: click.Parameter, value: str | None
                      ) -> str | None:
    ctx.meta.setdefault(_CREDENTIALS_KEY, {})[param.name] = value or None
    return value


def _credentials() -> Credentials:
    """The command's --tls-ca, --tls-cert, --tls-key and --token (or their environment
    variables), as the client's Credentials."""
    given = click.get_current_context().meta.get(_CREDENTIALS_KEY, {})
    return Credentials(**given)


def admin_client(bootstrap: str, timeout: float) -> Admin:
    """An Admin client for a command's --bootstrap, --timeout and credentials."""
    return Admin(_check_bootstrap(bootstrap), timeout=timeout, credentials=_credentials())


def client_options(f: F) -> F:
    """--bootstrap, --timeout and the credentials: every client command takes them. The
    credentials are not passed as arguments (every command would repeat four parameters);
    `_credentials()` reads them from the click context."""
    f = click.option("--token", envvar=ENV_TOKEN, default=None, expose_value=False,
                     callback=_store_credential, metavar="TOKEN",
                     help=f"Bearer token (from `rillet token create`) [env {ENV_TOKEN}].")(f)
    f = click.option("--tls-key", envvar=ENV_TLS_KEY, default=None, expose_value=False,
                     callback=_store_credential, metavar="FILE",
                     help=f"Key of --tls-cert (PEM) [env {ENV_TLS_KEY}].")(f)
    f = click.option("--tls-cert", envvar=ENV_TLS_CERT, default=None, expose_value=False,
                     callback=_store_credential, metavar="FILE",
                     help=f"Client certificate (PEM), for mutual TLS [env {ENV_TLS_CERT}].")(f)
    f = click.option("--tls-ca", envvar=ENV_TLS_CA, default=None, expose_value=False,
                     callback=_store_credential, metavar="FILE",
                     help=f"CA certificate(s) (PEM) the nodes' certificates are signed by; "
                          f"any --tls-* option turns TLS on [env {ENV_TLS_CA}].")(f)
    f = click.option("--timeout", type=float, default=5.0, show_default=True,
                     help="Seconds to wait for the cluster before giving up.")(f)
    f = click.option("--bootstrap", envvar="RILLET_BOOTSTRAP", default=DEFAULT_BOOTSTRAP,
                     show_default=True, help="HOST:PORT[,HOST:PORT...] of any nodes "
                     "[env RILLET_BOOTSTRAP].")(f)
    return f


def _check_bootstrap(bootstrap: str) -> str:
    try:
        parse_bootstrap(bootstrap)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bootstrap") from None
    return bootstrap


_MS = re.compile(r"^(\d+)ms$")


def parse_position(text: str) -> PositionSpec:
    """earliest | latest | OFFSET (integer) | TIME (ISO-8601, or milliseconds as 123ms / @123)."""
    t = text.strip()
    if t in ("earliest", "latest"):
        return t  # type: ignore[return-value]
    if t.isdigit():
        return int(t)
    m = _MS.match(t)
    if m or (t.startswith("@") and t[1:].isdigit()):
        return Timestamp(int(m.group(1) if m else t[1:]))
    try:
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not earliest, latest, an offset, an ISO-8601 time or <ms>ms") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Timestamp(int(when.timestamp() * 1000))


class _PositionType(click.ParamType):  # type: ignore[type-arg]
    name = "POSITION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> PositionSpec:
        if isinstance(value, int | Timestamp):
            return value
        return parse_position(str(value))


POSITION = _PositionType()


class _LazyGroup(click.Group):
    """Commands from optional packages, imported only when used: `rillet serve` pulls in the
    whole node (about half a second), which every client command would otherwise pay."""

    lazy: dict[str, tuple[str, str]] = {
        "serve": ("rillet.node.cli", "serve"),  # absent in a client-only install
        "chaos": ("rillet.chaos.cli", "chaos"),
        "acl": ("rillet.acl_cli", "acl"),  # imports rillet.cli itself
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self.lazy:
            return cmd
        module, attr = self.lazy[cmd_name]
        try:
            found = getattr(importlib.import_module(module), attr)
        except ImportError:
            return None
        return found if isinstance(found, click.Command) else None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Rillet: a replicated, replayable event log."""


# ------------------------------------------------------------------------------------ topics


@main.group()
def topic() -> None:
    """Create, list, describe and delete topics."""


@topic.command("create")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--replication-factor", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--config", "configs", multiple=True, metavar="KEY=VALUE",
              help="retention.ms, retention.bytes, segment.bytes, segment.ms, cleanup.policy; "
                   "repeat for several.")
@client_options
def topic_create(name: str, partitions: int, replication_factor: int, configs: Sequence[str],
                 bootstrap: str, timeout: float) -> None:
    """Create topic NAME."""
    settings: dict[str, str | int] = {}
    for item in configs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--config")
        settings[key.strip()] = value.strip()

    async def go() -> None:
        async with admin_client(bootstrap, timeout) as admin:
            desc = await admin.create_topic(name, partitions, replication_factor, settings)
        click.echo(f"created topic {desc.name} with {len(desc.partitions)} partitions", err=True)
    run_command(go())


@topic.command("list")
@client_options
def topic_list(bootstrap: str, timeout: float) -> None:
    """List topics: name, partitions, replication factor."""
    async def go() -> None:
        async with admin_client(bootstrap, timeout) as admin:
            topics = await admin.list_topics()
        for t in sorted(topics, key=lambda t: t.name):
            click.echo(f"{t.name}\tpartitions={t.partitions}\t"
                       f"replication_factor={t.replication_factor}")
    run_command(go())


@topic.command("describe")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one object, per partition: partition, leader_id, "
              "replicas, log_start_offset, high_watermark, size_bytes.")
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
@client_options
def topic_describe(name: str, fmt: str, as_json: bool, bootstrap: str, timeout: float) -> None:
    """Settings and per-partition state (leader, replicas, log start, high watermark, size).

    Each partition's offsets and size come from its leader's replica (the committed view);
    a partition without a reachable leader shows what the first answering node holds.
    """
    async def go() -> None:
        bs = _check_bootstrap(bootstrap)
        pool = ChannelPool(_credentials())
        try:
            desc, _ = await _describe_topics(pool, bs, [name], timeout)
        finally:
            await pool.close()
        topic_doc = desc[0]
        if as_json or fmt == "json":
            click.echo(json.dumps(topic_doc))
            return
        parts = topic_doc["partitions"]
        click.echo(f"topic {topic_doc['name']}: {len(parts)} partitions, replication factor "
                   f"{topic_doc['replication_factor']}")
        for k, v in topic_doc["config"].items():
            click.echo(f"  {k}={v}")
        click.echo("  partition\tleader\treplicas\tlog_start\thigh_watermark\tsize_bytes")
        for p in parts:
            click.echo(f"  {p['partition']}\t{_leader_text(p['leader_id'])}\t"
                       f"{_replicas_text(p['replicas'])}\t{p['log_start_offset']}\t"
                       f"{p['high_watermark']}\t{p['size_bytes']}")
    run_command(go())


def _leader_text(leader_id: int) -> str:
    return "none" if leader_id < 0 else str(leader_id)


def _replicas_text(replicas: Sequence[int]) -> str:
    return ",".join(str(r) for r in replicas)


def _partition_doc(p: admin_pb2.PartitionDescription) -> dict[str, Any]:
    return {"partition": p.partition, "leader_id": p.leader_id, "replicas": list(p.replicas),
            "log_start_offset": p.log_start_offset, "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes}


async def _describe_at(pool: ChannelPool, address: str, topic_name: str, timeout_s: float
                       ) -> admin_pb2.TopicDescription:
    stub = make_stub(admin_pb2_grpc.AdminStub, pool.get(address))
    try:
        resp: admin_pb2.DescribeTopicResponse = await stub.DescribeTopic(
            admin_pb2.DescribeTopicRequest(name=topic_name), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc
    return resp.topic


async def _describe_topics(pool: ChannelPool, bootstrap: str, names: Sequence[str],
                           timeout_s: float) -> tuple[list[dict[str, Any]], ClusterMetadata]:
    """Describe topics (all when `names` is empty) with every partition as its leader sees it.

    Metadata says who leads what; one DescribeTopic per leading node gives the leader's
    high watermark, log start and size (a follower's replica may lag). Leaders and replicas
    come from the metadata; the rest falls back to the first node that answers.
    """
    meta = ClusterMetadata(parse_bootstrap(bootstrap))
    await fetch_metadata(pool, meta, names, timeout_s=timeout_s)
    topics = list(names) or meta.topics()
    out: list[dict[str, Any]] = []
    for topic_name in topics:
        infos = meta.partitions(topic_name)
        if infos is None:
            raise UnknownTopicError(f"topic {topic_name!r} does not exist")
        # Any node describes the topic (settings, and a fallback per partition)...
        base: admin_pb2.TopicDescription | None = None
        last: Exception | None = None
        for addr in dict.fromkeys([*meta.bootstrap, *meta.brokers.values()]):
            try:
                base = await _describe_at(pool, addr, topic_name, timeout_s)
                break
            except RilletError as exc:
                if isinstance(exc, UnknownTopicError):
                    raise
                last = exc
        if base is None:
            raise ClusterUnreachableError(f"no node describes topic {topic_name!r}: {last}")
        by_partition = {p.partition: p for p in base.partitions}
        # ...and each leader its own partitions.
        leaders = sorted({i.leader_id for i in infos if i.leader_id >= 0})
        answers = await asyncio.gather(
            *(_describe_at(pool, meta.address(n) or "", topic_name, timeout_s)
              for n in leaders if meta.address(n)), return_exceptions=True)
        led = {n: a for n, a in zip([n for n in leaders if meta.address(n)], answers,
                                     strict=True) if isinstance(a, admin_pb2.TopicDescription)}
        parts = []
        for info in infos:
            view = led.get(info.leader_id)
            mine = next((p for p in view.partitions if p.partition == info.partition),
                        None) if view is not None else None
            p = mine or by_partition.get(info.partition)
            doc: dict[str, Any] = _partition_doc(p) if p is not None else {
                "partition": info.partition, "log_start_offset": -1, "high_watermark": -1,
                "size_bytes": -1}
            doc["leader_id"] = info.leader_id
            doc["replicas"] = list(info.replicas)
            parts.append(doc)
        out.append({"name": base.name, "replication_factor": base.replication_factor,
                    "config": config_dict(base.config), "partitions": parts})
    return out, meta


@topic.command("delete")
@click.argument("name")
@client_options
def topic_delete(name: str, bootstrap: str, timeout: float) -> None:
    """Delete topic NAME and all its data."""
    async def go() -> None:
        async with admin_client(bootstrap, timeout) as admin:
            await admin.delete_topic(name)
        click.echo(f"deleted topic {name}", err=True)
    run_command(go())


# ------------------------------------------------------------------------------------ produce


async def _read_lines(stream: IO[bytes], chunk: int = 1 << 20) -> Any:
    """Yield lists of lines (without the newline) as they arrive, never waiting for a full
    chunk, so `tail -f | rillet produce` flows; reads run in a thread off the event loop."""
    rest = b""
    while True:
        data = await asyncio.to_thread(stream.read1, chunk)  # type: ignore[attr-defined]
        if not data:
            if rest:
                yield [rest.removesuffix(b"\r")]
            return
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        if lines:
            yield lines


@main.command()
@click.argument("topic_name", metavar="TOPIC")
@click.option("--key-separator", default=None, metavar="SEP",
              help="Split each line at the first SEP into key and value.")
@click.option("--acks", type=click.Choice(["none", "leader", "all"]), default="all",
              show_default=True)
@click.option("--partition", type=click.IntRange(min=0), default=None,
              help="Send every record to this partition.")
@click.option("--linger-ms", type=float, default=5.0, show_default=True)
@client_options
def produce(topic_name: str, key_separator: str | None, acks: str, partition: int | None,
            linger_ms: float, bootstrap: str, timeout: float) -> None:
    """Send one record per line of standard input; exit 0 only when all were acknowledged."""
    sep = key_separator.encode() if key_separator else None
    stdin = sys.stdin.buffer

    async def go() -> None:
        sent = acked = 0
        first_error: BaseException | None = None

        def on_done(fut: asyncio.Future[Any]) -> None:
            nonlocal acked, first_error
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is None:
                result = fut.result()
                # send() gives one RecordMetadata, send_many() a list of ChunkAcks.
                acked += sum(a.record_count for a in result) if isinstance(result, list) else 1
            elif first_error is None:
                first_error = exc

        async with Producer(_check_bootstrap(bootstrap), acks=acks, linger_ms=linger_ms,
                            request_timeout_s=timeout, credentials=_credentials()) as producer:
            async for lines in _read_lines(stdin):
                if sep is None:
                    # No keys: the bulk path, one future per chunk of lines.
                    values = [ln.removesuffix(b"\r") for ln in lines]
                    many = await producer.send_many(topic_name, values, partition=partition)
                    many.add_done_callback(on_done)
                    sent += len(values)
                    if first_error is not None:
                        break
                    continue
                for line in lines:
                    line = line.removesuffix(b"\r")
                    key = None
                    if sep is not None:
                        k, found, v = line.partition(sep)
                        if found:
                            key, line = k, v
                    fut = await producer.send(topic_name, line, key=key, partition=partition)
                    fut.add_done_callback(on_done)
                    sent += 1
                    if first_error is not None:
                        break
                if first_error is not None:
                    break
            await producer.flush()
        # Done-callbacks run on the next loop turn after the futures resolve.
        await asyncio.sleep(0)
        click.echo(f"{acked} of {sent} records acknowledged", err=True)
        if first_error is not None or acked != sent:
            fail(f"{sent - acked} records not acknowledged: "
                  f"{describe(first_error) if first_error else 'unknown'}")
    run_command(go())


# ------------------------------------------------------------------------------------ reading


def _json_bytes(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _writer(out: IO[bytes], fmt: str) -> Callable[[RecordBatch, int], None]:
    """Write the first `limit` records of a batch in the chosen format."""
    if fmt == "text":
        def write_text(b: RecordBatch, limit: int) -> None:
            values = b.values[:limit]
            if values:
                out.write(b"\n".join(values) + b"\n")
        return write_text

    def write_json(b: RecordBatch, limit: int) -> None:
        lines = []
        for r in list(b)[:limit]:
            lines.append(json.dumps({
                "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp_ms,
                "key": _json_bytes(r.key) if r.key else None, "value": _json_bytes(r.value),
                "headers": {k: _json_bytes(v) for k, v in r.headers}}))
        if lines:
            out.write(("\n".join(lines) + "\n").encode())
    return write_json


read_options: list[Callable[[F], F]] = [
    click.option("--partition", "partitions", type=click.IntRange(min=0), multiple=True,
                 help="Read only this partition; repeat for several [default: all]."),
    click.option("--max-records", type=click.IntRange(min=1), default=None,
                 help="Stop after this many records."),
    click.option("--idle-timeout", type=float, default=None, metavar="SECONDS",
                 help="Stop after this long without a new record."),
    click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                 show_default=True, help="text: one value per line; json: one object per line "
                 "with key, value, headers, partition, offset, timestamp."),
]


def _read_options(f: F) -> F:
    for opt in reversed(read_options):
        f = opt(f)
    return f


async def _pump(reader: Consumer | Replay, out: IO[bytes], fmt: str, max_records: int | None,
                idle_timeout: float | None, progress: Any = None) -> int:
    write = _writer(out, fmt)
    seen = 0
    while max_records is None or seen < max_records:
        try:
            batches = await reader.getmany(idle_timeout)
        except StopAsyncIteration:
            break
        if not batches:
            break  # idle timeout
        for b in batches:
            limit = len(b) if max_records is None else min(len(b), max_records - seen)
            write(b, limit)
            seen += limit
            if progress is not None:
                progress.update(limit)
            if max_records is not None and seen >= max_records:
                break
        out.flush()
    return seen


@main.command()
@click.argument("topic_name", metavar="TOPIC")
@click.option("--from", "start", type=POSITION, default="latest", show_default=True,
              help="earliest | latest | OFFSET | TIME (ISO-8601, or <ms>ms). With --group: "
              "where to start partitions the group has no offset for (earliest | latest).")
@click.option("--group", "group_id", default=None, metavar="GROUP",
              help="Consume as a member of consumer group GROUP: read the partitions it "
              "assigns from its committed offsets, and commit what was printed, so the next "
              "run prints only what is new.")
@_read_options
@client_options
def consume(topic_name: str, start: PositionSpec, group_id: str | None,
            partitions: Sequence[int], max_records: int | None, idle_timeout: float | None,
            fmt: str, bootstrap: str, timeout: float) -> None:
    """Print records of TOPIC from a position, tailing new ones until Ctrl-C."""
    if group_id is not None:
        if partitions:
            raise click.UsageError("--partition cannot be used with --group (the group "
                                   "assigns partitions)")
        if start not in ("earliest", "latest"):
            raise click.BadParameter("with --group, --from is earliest or latest",
                                     param_hint="--from")
        run_command(_consume_group(_check_bootstrap(bootstrap), topic_name, group_id,
                            "earliest" if start == "earliest" else "latest", fmt,
                            max_records, idle_timeout, timeout))
        return

    async def go() -> None:
        async with Consumer(_check_bootstrap(bootstrap), topic_name, start=start,
                            partitions=list(partitions) or None,
                            request_timeout_s=timeout, credentials=_credentials()) as consumer:
            await _pump(consumer, sys.stdout.buffer, fmt, max_records, idle_timeout)
    run_command(go())


async def _consume_group(bootstrap: str, topic_name: str, group_id: str,
                         reset: Literal["earliest", "latest"], fmt: str,
                         max_records: int | None, idle_timeout: float | None,
                         timeout_s: float) -> None:
    """`consume --group`: print as a member, then commit exactly what was printed.

    Auto-commit runs meanwhile (it only counts batches printed in full), and partitions taken
    away by a rebalance are committed as they go. At the end (max records, idle timeout,
    Ctrl-C) the offsets after the last printed record of each partition are committed, and
    not a record more: the next run with the same group starts right after them.
    """
    out = sys.stdout.buffer
    write = _writer(out, fmt)
    printed: dict[TopicPartition, int] = {}
    consumer = GroupConsumer(bootstrap, topic_name, group_id=group_id, auto_offset_reset=reset,
                             request_timeout_s=timeout_s, credentials=_credentials())
    await consumer.start()
    seen = 0
    # SIGTERM (a supervisor stopping us) ends the run like the idle timeout: commit, leave.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    terminated = False

    def on_term() -> None:
        nonlocal terminated
        terminated = True
        if main_task is not None:
            main_task.cancel()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, on_term)
    try:
        while max_records is None or seen < max_records:
            batches = await consumer.getmany(idle_timeout)
            if not batches:
                break  # idle timeout
            for b in batches:
                limit = len(b) if max_records is None else min(len(b), max_records - seen)
                write(b, limit)
                seen += limit
                tp = TopicPartition(b.topic, b.partition)
                printed[tp] = b.next_offset if limit == len(b) else list(b)[limit - 1].offset + 1
                if max_records is not None and seen >= max_records:
                    break
            out.flush()
    except asyncio.CancelledError:
        if not terminated:
            raise
        out.flush()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        try:
            mine = {tp: o for tp, o in printed.items() if tp in consumer.assignment()}
            if mine:
                await consumer.commit(mine)
        finally:
            await consumer.close(commit=False)
    click.echo(f"consumed {seen} records as group {group_id}", err=True)


@main.command()
@click.argument("topic_name", metavar="TOPIC")
@click.option("--from", "start", type=POSITION, default="earliest", show_default=True,
              help="Start: earliest | OFFSET | TIME.")
@click.option("--to", "end", type=POSITION, default="latest", show_default=True,
              help="Exclusive end: latest (the high watermark now) | OFFSET | TIME.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write records here instead of standard output.")
@_read_options
@client_options
def replay(topic_name: str, start: PositionSpec, end: PositionSpec, output: Path | None,
           partitions: Sequence[int], max_records: int | None, idle_timeout: float | None,
           fmt: str, bootstrap: str, timeout: float) -> None:
    """Send a bounded range of TOPIC to standard output or a file; ends when it is sent."""
    bs = _check_bootstrap(bootstrap)
    try:
        out: IO[bytes] = open(output, "wb") if output else sys.stdout.buffer
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}")

    async def go() -> None:
        progress = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            progress = tqdm(total=await _replay_total(bs, topic_name, start, end, partitions,
                                                      timeout),
                            unit=" records", file=sys.stderr)
        try:
            async with Replay(bs, topic_name, start=start, end=end,
                              partitions=list(partitions) or None,
                              request_timeout_s=timeout, credentials=_credentials()) as reader:
                n = await _pump(reader, out, fmt, max_records, idle_timeout, progress)
        finally:
            if output:
                out.close()
            if progress is not None:
                progress.close()
        click.echo(f"replayed {n} records", err=True)
    run_command(go())


async def _replay_total(bootstrap: str, topic_name: str, start: PositionSpec,
                        end: PositionSpec, partitions: Sequence[int], timeout_s: float
                        ) -> int | None:
    """How many records the range holds, when offsets alone decide it (for the bar)."""
    if isinstance(start, Timestamp) or isinstance(end, Timestamp):
        return None
    async with Admin(bootstrap, timeout=timeout_s, credentials=_credentials()) as admin:
        desc = await admin.describe_topic(topic_name)
    total = 0
    for p in desc.partitions:
        if partitions and p.partition not in partitions:
            continue
        lo = p.log_start_offset if start in ("earliest", "latest") else max(
            int(start), p.log_start_offset)
        if start == "latest":
            lo = p.high_watermark
        hi = p.high_watermark if end in ("earliest", "latest") else min(int(end),
                                                                        p.high_watermark)
        total += max(0, hi - lo)
    return total


# ------------------------------------------------------------------------------------ cluster


@main.group()
def cluster() -> None:
    """Inspect the cluster: nodes, their health, partition leaders."""


HEALTH_TIMEOUT_S = 1.0


async def _health(pool: ChannelPool, address: str) -> str:
    """SERVING / NOT_SERVING / ..., or UNREACHABLE (<status>) within HEALTH_TIMEOUT_S."""
    stub = make_stub(health_pb2_grpc.HealthStub, pool.get(address))
    try:
        resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


@cluster.command("status")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one object with nodes (id, address, health) and "
              "topics (per partition: partition, leader_id, replicas, high_watermark, ...).")
@client_options
def cluster_status(fmt: str, bootstrap: str, timeout: float) -> None:
    """Nodes with their health, and the leader and replicas of every partition.

    Metadata comes from the first bootstrap node that answers; every registered node is then
    asked for its health with a short deadline, so a dead node shows as UNREACHABLE instead
    of stalling the command.
    """
    async def go() -> None:
        bs = _check_bootstrap(bootstrap)
        pool = ChannelPool(_credentials())
        try:
            topics, meta = await _describe_topics(pool, bs, [], timeout)
            brokers = sorted(meta.brokers.items())
            health = await asyncio.gather(*(_health(pool, addr) for _, addr in brokers))
        finally:
            await pool.close()
        nodes = [{"id": n, "address": addr, "health": h}
                 for (n, addr), h in zip(brokers, health, strict=True)]
        if fmt == "json":
            click.echo(json.dumps({"cluster_id": meta.cluster_id, "nodes": nodes,
                                   "topics": topics}))
            return
        click.echo(f"cluster {meta.cluster_id}: {len(nodes)} nodes, {len(topics)} topics")
        click.echo("  node\taddress\thealth")
        for node in nodes:
            click.echo(f"  {node['id']}\t{node['address']}\t{node['health']}")
        for t in topics:
            parts = t["partitions"]
            leaderless = sum(1 for p in parts if p["leader_id"] < 0)
            click.echo(f"topic {t['name']}: {len(parts)} partitions, replication factor "
                       f"{t['replication_factor']}"
                       + (f", {leaderless} without a leader" if leaderless else ""))
            click.echo("  partition\tleader\treplicas\thigh_watermark")
            for p in parts:
                click.echo(f"  {p['partition']}\t{_leader_text(p['leader_id'])}\t"
                           f"{_replicas_text(p['replicas'])}\t{p['high_watermark']}")
    run_command(go())


# ------------------------------------------------------------------------------------ groups


@main.group()
def group() -> None:
    """Consumer groups: list, describe (lag), reset offsets, delete."""


def _fmt_option(f: F) -> F:
    return click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                        show_default=True)(f)


@group.command("list")
@_fmt_option
@client_options
def group_list(fmt: str, bootstrap: str, timeout: float) -> None:
    """Groups with their state (stable, rebalancing, empty) and member count."""
    async def go() -> None:
        async with admin_client(bootstrap, timeout) as admin:
            groups = await admin.list_groups()
        if fmt == "json":
            click.echo(json.dumps([{"group": g.group, "state": g.state, "members": g.members}
                                   for g in groups]))
            return
        for g in groups:
            click.echo(f"{g.group}\tstate={g.state}\tmembers={g.members}")
    run_command(go())


def _tps_text(items: Sequence[Any]) -> str:
    return ",".join(f"{t.topic}/{p}" for t in items for p in t.partitions) or "-"


def group_doc(d: Any) -> dict[str, Any]:
    """A DescribeGroupResponse as the JSON `group describe --format json` prints."""
    return {
        "group": d.group, "state": d.state, "generation": d.generation,
        "members": [{"member_id": m.member_id, "instance_id": m.instance_id,
                     "client_id": m.client_id, "disconnected": m.disconnected,
                     "assigned": [{"topic": t.topic, "partitions": list(t.partitions)}
                                  for t in m.assigned]} for m in d.members],
        "partitions": [{"topic": p.topic, "partition": p.partition,
                        "committed_offset": p.committed_offset,
                        "high_watermark": p.high_watermark,
                        "log_start_offset": p.log_start_offset, "lag": p.lag_offsets,
                        "lag_seconds": p.lag_ms / 1000, "owner": p.owner}
                       for p in d.partitions],
    }


@group.command("describe")
@click.argument("group_id", metavar="GROUP")
@_fmt_option
@client_options
def group_describe(group_id: str, fmt: str, bootstrap: str, timeout: float) -> None:
    """Members, and per partition: committed offset, high watermark, lag in offsets and in
    seconds (age of the oldest record not yet consumed), owner."""
    async def go() -> None:
        async with admin_client(bootstrap, timeout) as admin:
            desc = await admin.describe_group(group_id)
        doc = group_doc(desc)
        if fmt == "json":
            click.echo(json.dumps(doc))
            return
        click.echo(f"group {desc.group}: {desc.state}, generation {desc.generation}, "
                   f"{len(desc.members)} members")
        if desc.members:
            click.echo("  member\tinstance\tclient\tpartitions")
            for m in desc.members:
                gone = " (disconnected)" if m.disconnected else ""
                click.echo(f"  {m.member_id}{gone}\t{m.instance_id or '-'}\t"
                           f"{m.client_id or '-'}\t{_tps_text(m.assigned)}")
        click.echo("  topic\tpartition\tcommitted\thigh_watermark\tlag\tlag_seconds\towner")
        for p in doc["partitions"]:
            committed = "-" if p["committed_offset"] < 0 else p["committed_offset"]
            click.echo(f"  {p['topic']}\t{p['partition']}\t{committed}\t"
                       f"{p['high_watermark']}\t{p['lag']}\t{p['lag_seconds']:.3f}\t"
                       f"{p['owner'] or '-'}")
    run_command(go())


@group.command("reset-offsets")
@click.argument("group_id", metavar="GROUP")
@click.option("--topic", "topic_name", required=True)
@click.option("--to", "to", type=POSITION, required=True,
              help="earliest | latest | OFFSET | TIME (ISO-8601, or <ms>ms).")
@click.option("--partition", "partitions", type=click.IntRange(min=0), multiple=True,
              help="Only this partition; repeat for several [default: all].")
@click.option("--dry-run", is_flag=True, help="Print the new offsets without storing them.")
@_fmt_option
@client_options
def group_reset_offsets(group_id: str, topic_name: str, to: PositionSpec,
                        partitions: Sequence[int], dry_run: bool, fmt: str, bootstrap: str,
                        timeout: float) -> None:
    """Move GROUP's committed offsets on a topic (only while the group has no members)."""
    async def go() -> None:
        async with admin_client(bootstrap, timeout) as admin:
            offsets = await admin.reset_group_offsets(group_id, topic_name, to_position(to),
                                                      list(partitions), dry_run=dry_run)
        if fmt == "json":
            click.echo(json.dumps([{"topic": o.topic, "partition": o.partition,
                                    "offset": o.offset} for o in offsets]))
        else:
            for o in offsets:
                click.echo(f"{o.topic}\t{o.partition}\t{o.offset}")
        click.echo(f"{'would reset' if dry_run else 'reset'} {len(offsets)} partitions of "
                   f"group {group_id}", err=True)
    run_command(go())


@group.command("delete")
@click.argument("group_id", metavar="GROUP")
@client_options
def group_delete(group_id: str, bootstrap: str, timeout: float) -> None:
    """Forget GROUP and its committed offsets (only while it has no members)."""
    async def go() -> None:
        async with admin_client(bootstrap, timeout) as admin:
            await admin.delete_group(group_id)
        click.echo(f"deleted group {group_id}", err=True)
    run_command(go())


# ------------------------------------------------------------------------------------ tokens


@main.group()
def token() -> None:
    """Bearer tokens for nodes started with --token-file."""


#: A principal name, as the node's token file accepts it (rillet.node.security.tokens).
_PRINCIPAL = re.compile(r"^[A-Za-z0-9._@:/=+-]{1,256}$")


@token.command("create")
@click.argument("principal")
@click.option("--append-to", "append_to", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="FILE",
              help="Also append the hashed line to this token file (created if missing).")
def token_create(principal: str, append_to: Path | None) -> None:
    """Make a new random token for PRINCIPAL.

    Prints the token (shown this once: the node keeps only its SHA-256) on stdout, and on
    stderr the line to add to every node's token file: `sha256:<hex> PRINCIPAL`. Running
    nodes pick up a changed file within a second.
    """
    if not _PRINCIPAL.match(principal):
        raise click.BadParameter("1-256 characters of letters, digits and . _ @ : / = + -",
                                 param_hint="PRINCIPAL")
    new = secrets.token_urlsafe(32)
    line = f"sha256:{hashlib.sha256(new.encode()).hexdigest()} {principal}"
    click.echo(new)
    if append_to is not None:
        # A new file is readable by its owner only; an existing one keeps its mode.
        fd = os.open(append_to, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        click.echo(f"added to {append_to}: {line}", err=True)
    else:
        click.echo(f"add this line to the nodes' token file:\n{line}", err=True)


# ------------------------------------------------------------------------------------ bench


@main.group()
def bench() -> None:
    """Measure produce and consume throughput and ack latency."""


def _bench_options(f: F) -> F:
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(f)
    f = click.option("--replication-factor", type=click.IntRange(min=1), default=None,
                     help="Create the topic with this replication factor first (and wait for "
                     "its leaders) [default: the bench creates it with 1].")(f)
    f = click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Partitions when the topic is created.")(f)
    f = click.option("--count", type=click.IntRange(min=1), default=1_000_000,
                     show_default=True, help="Records.")(f)
    f = click.option("--record-size", type=click.IntRange(min=0), default=100,
                     show_default=True, help="Bytes per record value.")(f)
    f = click.option("--topic", "topic_name", default="rillet-bench", show_default=True)(f)
    return f


@bench.command("produce")
@_bench_options
@click.option("--acks", type=click.Choice(["none", "leader", "all"]), default="all",
              show_default=True)
@click.option("--linger-ms", type=float, default=5.0, show_default=True)
@click.option("--batch-bytes", type=click.IntRange(min=1024, max=1024 * 1024),
              default=1_000_000, show_default=True)
@click.option("--max-in-flight", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--api", type=click.Choice(["record", "many"]), default="record",
              show_default=True, help="record: send() per record, one RecordFuture each; many: "
              "send_many() in chunks, one future per chunk.")
@click.option("--chunk", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Records per send_many() call with --api many.")
@click.option("--buffer-bytes", type=click.IntRange(min=1024 * 1024), default=8 * 1024 * 1024,
              show_default=True, help="Unacknowledged bytes before send waits; latency "
              "includes time spent queued here.")
@client_options
def bench_produce_cmd(topic_name: str, record_size: int, count: int, partitions: int,
                      replication_factor: int | None, as_json: bool, acks: str,
                      linger_ms: float, batch_bytes: int, max_in_flight: int, api: str,
                      chunk: int, buffer_bytes: int, bootstrap: str, timeout: float) -> None:
    """Produce COUNT records as fast as the client can; report records/s, MB/s, latency."""
    async def go() -> None:
        bs = _check_bootstrap(bootstrap)
        await _reachable(bs, timeout)
        if replication_factor is not None:
            await _ensure_replicated_topic(bs, topic_name, partitions, replication_factor,
                                           timeout)
        result = await bench_produce(
            bs, topic_name, count=count, record_bytes=record_size, acks=acks,
            partitions=partitions, linger_ms=linger_ms, batch_bytes=batch_bytes,
            max_in_flight=max_in_flight, api=api, chunk=chunk, buffer_bytes=buffer_bytes,
            credentials=_credentials())
        click.echo(json.dumps(result.as_dict()) if as_json else result.summary())
    run_command(go())


@bench.command("consume")
@_bench_options
@click.option("--max-bytes", type=click.IntRange(min=1024), default=1024 * 1024,
              show_default=True, help="Bytes per consume response.")
@click.option("--no-values", is_flag=True, help="Count records without reading values.")
@client_options
def bench_consume_cmd(topic_name: str, record_size: int, count: int, partitions: int,
                      replication_factor: int | None, as_json: bool, max_bytes: int,
                      no_values: bool, bootstrap: str, timeout: float) -> None:
    """Consume COUNT records from earliest (producing them first if missing)."""
    async def go() -> None:
        bs = _check_bootstrap(bootstrap)
        await _reachable(bs, timeout)
        if replication_factor is not None:
            await _ensure_replicated_topic(bs, topic_name, partitions, replication_factor,
                                           timeout)
        result = await bench_consume(
            bs, topic_name, count=count, record_bytes=record_size, partitions=partitions,
            max_bytes=max_bytes, read_values=not no_values, credentials=_credentials())
        click.echo(json.dumps(result.as_dict()) if as_json else result.summary())
    run_command(go())


async def _ensure_replicated_topic(bootstrap: str, topic_name: str, partitions: int,
                                   replication_factor: int, timeout_s: float) -> None:
    """Create the bench topic with a replication factor (the bench itself creates RF 1),
    kept forever like the bench's own, then wait until every partition has a leader so the
    timing does not include elections. An existing topic is used as it is."""
    async with Admin(bootstrap, timeout=max(timeout_s, 30.0), credentials=_credentials()) as admin:
        try:
            await admin.create_topic(topic_name, partitions, replication_factor,
                                     {"retention.ms": -1})
        except TopicExistsError:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 30.0)
        while True:
            meta = await admin.metadata([topic_name])
            parts = meta.partitions(topic_name) or ()
            if parts and all(p.leader_id >= 0 for p in parts):
                return
            if loop.time() > deadline:
                raise UnavailableError(f"topic {topic_name}: not every partition has a leader")
            await asyncio.sleep(0.1)


async def _reachable(bootstrap: str, timeout_s: float) -> None:
    pool = ChannelPool(_credentials())
    try:
        await fetch_metadata(pool, ClusterMetadata(parse_bootstrap(bootstrap)),
                             timeout_s=timeout_s)
    finally:
        await pool.close()


if __name__ == "__main__":
    main()
