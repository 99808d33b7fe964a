"""`rillet serve` / `python -m rillet.node`: run one node from flags, environment and a file.

Flags left unset fall through to `RILLET_*` environment variables, then the config file, then
defaults (see rillet.node.config). Exit status: 0 after a graceful stop, 2 for bad settings,
1 when the node cannot start (port taken, data dir in use).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from rillet.cluster.rounds import Round
from rillet.node import logs
from rillet.node.broker import Broker, DataDirLayoutError, DataDirLockedError
from rillet.node.config import ConfigError, load

log = logging.getLogger(__name__)


@click.command("serve")
@click.option("--node-id", type=int, default=None, help="Node id [RILLET_NODE_ID; default 0].")
@click.option("--listen", default=None,
              help="HOST:PORT to serve on [RILLET_LISTEN; default 127.0.0.1:9091].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Directory for topics and logs [RILLET_DATA_DIR; default .rillet-data].")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML config file [RILLET_CONFIG].")
@click.option("--advertised-address", default=None,
              help="HOST:PORT clients are told to use [default: --listen].")
@click.option("--peers", default=None,
              help="Every node of the cluster, this one included: ID=HOST:PORT,... "
                   "[RILLET_PEERS; default: run alone].")
@click.option("--metrics-listen", default=None,
              help="HOST:PORT for Prometheus metrics at /metrics [RILLET_METRICS_LISTEN; "
                   "default: off].")
@click.option("--max-batch-bytes", type=int, default=None,
              help="Largest produced batch accepted [default 1 MiB].")
@click.option("--flush-linger-ms", type=float, default=None,
              help="Extra wait before each group-commit fsync [default 0].")
@click.option("--health-listen", default=None, metavar="HOST:PORT",
              help="A plaintext port serving only gRPC health, for probes that cannot speak "
                   "TLS [RILLET_HEALTH_LISTEN; default: off].")
@click.option("--tls-cert", default=None, metavar="FILE",
              help="This node's certificate chain (PEM); with --tls-key turns on TLS "
                   "[RILLET_TLS_CERT; default: plaintext].")
@click.option("--tls-key", default=None, metavar="FILE",
              help="The private key of --tls-cert (PEM) [RILLET_TLS_KEY].")
@click.option("--tls-client-ca", default=None, metavar="FILE",
              help="CA bundle client and peer certificates must chain to; turns on mutual "
                   "TLS, the certificate's common name naming the principal "
                   "[RILLET_TLS_CLIENT_CA].")
@click.option("--tls-peer-ca", default=None, metavar="FILE",
              help="CA bundle trusted when dialing peers [RILLET_TLS_PEER_CA; default: "
                   "--tls-client-ca].")
@click.option("--token-file", default=None, metavar="FILE",
              help="File of hashed bearer tokens (see `rillet token create`); calls must "
                   "then authenticate [RILLET_TOKEN_FILE].")
@click.option("--peer-principals", default=None, metavar="NAMES",
              help="Principals of the cluster's nodes, comma-separated, prefix* allowed: the "
                   "only ones peer links accept [RILLET_PEER_PRINCIPALS]. The token a node "
                   "shows its peers comes from RILLET_PEER_TOKEN (no flag: it is a secret).")
@click.option("--acl/--no-acl", default=None,
              help="Authorize every call against the ACLs [RILLET_ACL; default off].")
@click.option("--super-users", default=None, metavar="NAMES",
              help="Principals allowed everything when ACLs are on, comma-separated "
                   "[RILLET_SUPER_USERS].")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR [default INFO].")
@click.option("--log-format", default=None,
              help="text or json (one object per line) [RILLET_LOG_FORMAT; default text].")
def serve(config_file: Path | None, **flags: Any) -> None:
    """Run one Rillet node until SIGTERM or SIGINT."""
    run(config_file, flags)


def run(config_file: Path | None, flags: dict[str, Any], *,
        round_type: type[Round] = Round) -> None:
    """`serve`'s body; `round_type` is the Raft round the node runs (the chaos harness
    starts nodes with a planted bug in one, rillet.chaos.planted)."""
    try:
        config = load(flags, os.environ, config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    logs.configure(config.node_id, config.log_level, config.log_format)
    try:
        # Reads the certificate, key and token files: a bad one is a usage error too.
        broker = Broker(config, round_type=round_type)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        asyncio.run(broker.run())
    except (DataDirLockedError, DataDirLayoutError, OSError) as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
