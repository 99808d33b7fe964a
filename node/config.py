"""Broker settings from flags, environment and a TOML file, in that order of precedence.

Every setting has one name used everywhere: the dataclass field, the TOML key (dashes are
accepted for underscores), and the environment variable `RILLET_<NAME>` in upper case
(`RILLET_NODE_ID`, `RILLET_LISTEN`, `RILLET_DATA_DIR`, ...). Precedence is
flags > environment > config file > defaults, so an operator can keep a shared file and
override one value per process. `RILLET_CONFIG` (or `--config`) names the file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
DAY_MS = 24 * 3600 * 1000

ENV_PREFIX = "RILLET_"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting, its source and the rule."""


@dataclass(frozen=True)
class BrokerConfig:
    """Settings of one broker node. Units are in the names."""

    node_id: int = 0
    # host:port to listen on; 127.0.0.1:9091 is the clients' default bootstrap address.
    listen: str = "127.0.0.1:9091"
    # host:port that clients are told to connect to (Metadata); defaults to `listen`.
    advertised_address: str = ""
    data_dir: Path = Path(".rillet-data")
    # HOST:PORT to serve Prometheus metrics on (/metrics over HTTP); empty: no metrics server.
    metrics_listen: str = ""
    # HOST:PORT of a plaintext port that serves only gRPC health, for probes that cannot speak
    # TLS (Kubernetes' built-in grpc probes); empty: health is served on `listen` only.
    health_listen: str = ""
    # The cluster: "ID=HOST:PORT,ID=HOST:PORT,..." naming every node, this one included, by the
    # address its peers reach it at. Empty: this node is a cluster of one (itself).
    peers: str = ""
    # "ID=HOST:PORT,..." overriding, for node-to-node calls only, where this node dials some
    # peers (the Raft stream, forwarded produce, admin and reads); clients are still told the
    # `peers` addresses. The fault-injection harness points these at its TCP proxies so that
    # each directed link can be cut on its own.
    peer_dial: str = ""
    # Raft timing for every group: one tick lasts raft_tick_ms; a follower campaigns after
    # [election_ticks, 2*election_ticks) ticks without a leader.
    raft_tick_ms: int = 100
    election_ticks: int = 10
    cluster_id: str = "rillet-local"
    # Security (docs/security.md). TLS: certificate chain and key files of this node, used to
    # serve clients and peers and, in a cluster, as this node's client certificate on peer
    # links. tls_client_ca: CA bundle that client (and peer) certificates must chain to; set, it
    # turns on mutual TLS. All three empty: plaintext (local development).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # CA bundle this node trusts when it dials its peers (default: tls_client_ca).
    tls_peer_ca: str = ""
    # File of hashed bearer tokens, each mapped to a principal; set, calls must authenticate.
    token_file: str = ""
    # Principals (comma-separated; a trailing * matches a prefix) that are cluster members:
    # the only ones a peer link accepts, and allowed everything.
    peer_principals: str = ""
    # The bearer token this node presents to its peers when it has no certificate to show.
    peer_token: str = ""
    # Authorization: when true, every call needs an ACL that allows it (PERMISSION_DENIED).
    acl: bool = False
    # Principals (comma-separated) allowed everything when ACLs are on: the bootstrap admins.
    super_users: str = ""
    # Largest produced batch accepted (BATCH_TOO_LARGE above it).
    max_batch_bytes: int = 1 * MIB
    # Largest read response a consumer may ask for (max_bytes is clamped to it).
    max_fetch_bytes: int = 8 * MIB
    max_partitions: int = 1000
    # Hostile-input limits (INVALID_BATCH / INVALID_ARGUMENT above them).
    max_batch_records: int = 100_000
    max_record_headers: int = 64
    max_record_header_bytes: int = 64 * KIB
    max_group_name_length: int = 249
    # HTTP/2 streams one client connection may have open at once (grpc.max_concurrent_streams).
    max_streams_per_connection: int = 256
    # Topic defaults (a CreateTopic may override each one).
    default_partitions: int = 1
    retention_ms: int = 7 * DAY_MS
    retention_bytes: int = -1
    segment_bytes: int = 256 * MIB
    segment_ms: int = 7 * DAY_MS
    index_interval_bytes: int = 4 * KIB
    # Produce pipelining: responses pending (not yet answered) per stream before the broker
    # stops reading that stream's requests.
    produce_max_pending: int = 64
    # Group commit: extra time the flusher waits after the first unflushed append so that
    # more batches share one fsync; 0 flushes as soon as the previous fsync finished.
    flush_linger_ms: float = 0.0
    retention_check_interval_ms: int = 5 * 60 * 1000
    # How often the compactor visits the partitions of cleanup.policy=compact topics.
    compaction_interval_ms: int = 15_000
    # Seconds that in-flight calls get to finish on SIGTERM/SIGINT before they are cancelled.
    shutdown_grace_s: float = 5.0
    log_level: str = "INFO"
    # "text" (one readable line per record) or "json" (one JSON object per line).
    log_format: str = "text"

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def peer_map(self) -> dict[int, str]:
        """Node id -> address for every node of the cluster. Without `peers` a node is a
        cluster of one: itself, at the address clients are told to use."""
        return parse_peers(self.peers) or {self.node_id: self.address}

    @property
    def dial_map(self) -> dict[int, str]:
        """Node id -> the address this node dials for node-to-node calls."""
        return {**self.peer_map, **parse_peers(self.peer_dial)}

    @property
    def address(self) -> str:
        """The address clients should use to reach this node."""
        return self.advertised_address or self.listen

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that is out of range."""
        _check_address("listen", self.listen)
        if self.advertised_address:
            _check_address("advertised_address", self.advertised_address)
        if self.metrics_listen:
            _check_address("metrics_listen", self.metrics_listen)
        if self.health_listen:
            _check_address("health_listen", self.health_listen)
        _check_range("node_id", self.node_id, 0, 2**31 - 1)
        _check_range("max_batch_bytes", self.max_batch_bytes, 1 * KIB, 64 * MIB)
        _check_range("max_fetch_bytes", self.max_fetch_bytes, 64 * KIB, 64 * MIB)
        _check_range("max_partitions", self.max_partitions, 1, 100_000)
        _check_range("max_batch_records", self.max_batch_records, 1, 10_000_000)
        _check_range("max_record_headers", self.max_record_headers, 0, 100_000)
        _check_range("max_record_header_bytes", self.max_record_header_bytes, 0, 64 * MIB)
        # At most 249: group ids live in the replicated metadata, which checks that bound
        # itself (cluster/metadata.py); a node can only ask for shorter ones.
        _check_range("max_group_name_length", self.max_group_name_length, 1, 249)
        _check_range("max_streams_per_connection", self.max_streams_per_connection, 1, 100_000)
        _check_range("default_partitions", self.default_partitions, 1, self.max_partitions)
        _check_retention("retention_ms", self.retention_ms)
        _check_retention("retention_bytes", self.retention_bytes)
        _check_range("segment_bytes", self.segment_bytes, 1 * MIB, 2 * GIB - 1)
        _check_range("segment_ms", self.segment_ms, 1000, 2**62)
        _check_range("index_interval_bytes", self.index_interval_bytes, 1, 64 * MIB)
        _check_range("produce_max_pending", self.produce_max_pending, 1, 10_000)
        if not 0 <= self.flush_linger_ms <= 1000:
            raise ConfigError(f"flush_linger_ms must be in [0, 1000], got {self.flush_linger_ms}")
        _check_range("retention_check_interval_ms", self.retention_check_interval_ms, 100,
                     2**62)
        _check_range("compaction_interval_ms", self.compaction_interval_ms, 10, 2**62)
        if not 0 <= self.shutdown_grace_s <= 600:
            raise ConfigError(f"shutdown_grace_s must be in [0, 600], got {self.shutdown_grace_s}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                              f"got {self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        if not self.cluster_id:
            raise ConfigError("cluster_id must not be empty")
        if self.peers:
            peers = parse_peers(self.peers)
            if self.node_id not in peers:
                raise ConfigError(f"peers must name this node (node_id {self.node_id}), "
                                  f"got {self.peers!r}")
            extra = set(parse_peers(self.peer_dial)) - set(peers)
            if extra:
                raise ConfigError(f"peer_dial names nodes that peers does not: "
                                  f"{sorted(extra)}")
        elif self.peer_dial:
            raise ConfigError("peer_dial needs peers (it overrides how peers are dialled)")
        _check_range("raft_tick_ms", self.raft_tick_ms, 1, 10_000)
        _check_range("election_ticks", self.election_ticks, 2, 1000)
        self._validate_security()

    @property
    def authenticates(self) -> bool:
        """Calls must carry credentials: a token file, or mutual TLS."""
        return bool(self.token_file or self.tls_client_ca)

    def _validate_security(self) -> None:
        """Half-configured TLS, tokens or peer identity: ConfigError saying what is missing.
        (Whether the files exist and parse is checked when the node starts: rillet.node.security.)
        """
        if self.tls_cert and not self.tls_key:
            raise ConfigError("tls_cert is set but tls_key is not: TLS needs the certificate "
                              "and its private key")
        if self.tls_key and not self.tls_cert:
            raise ConfigError("tls_key is set but tls_cert is not: TLS needs the certificate "
                              "and its private key")
        for name in ("tls_client_ca", "tls_peer_ca"):
            if getattr(self, name) and not self.tls_cert:
                raise ConfigError(f"{name} is set but tls_cert and tls_key are not: a node "
                                  f"needs its own certificate to use TLS")
        if self.token_file and self.tls_client_ca:
            # Refused rather than ignored: under mutual TLS every connection shows a
            # certificate and its common name is the principal; no token would ever be read.
            raise ConfigError("token_file and tls_client_ca are both set: under mutual TLS the "
                              "client certificate names the principal and tokens are never "
                              "read; use one of them")
        if self.acl and not self.authenticates:
            raise ConfigError("acl needs authentication: set token_file or tls_client_ca "
                              "(without it every caller, peers included, is anonymous)")
        if len(self.peer_map) <= 1:
            return  # no peer links to secure
        if self.authenticates and not self.peer_principals.strip():
            raise ConfigError("peer_principals must name the cluster's nodes (names, or "
                              "prefixes ending in *) when a cluster authenticates calls "
                              "(token_file or tls_client_ca): only they may use peer links")
        if self.tls_cert and not (self.tls_peer_ca or self.tls_client_ca):
            raise ConfigError("a TLS cluster needs tls_peer_ca (or tls_client_ca): the CA "
                              "this node trusts when it dials its peers")
        if self.token_file and not self.tls_client_ca and not self.peer_token:
            raise ConfigError("peer_token is needed when a cluster authenticates with "
                              "token_file and no mutual TLS: nodes show it to each other")


def parse_peers(text: str) -> dict[int, str]:
    """Parse "0=HOST:PORT,1=HOST:PORT"; ConfigError says which part is wrong."""
    out: dict[int, str] = {}
    if not text.strip():
        return out
    for part in text.split(","):
        ident, sep, address = part.strip().partition("=")
        if not sep or not ident.strip().isdigit():
            raise ConfigError(f"peers must be ID=HOST:PORT entries separated by commas, "
                              f"got {part.strip()!r}")
        node_id = int(ident)
        _check_range("peer node id", node_id, 0, 2**31 - 2)
        _check_address(f"peer {node_id} address", address.strip())
        if node_id in out:
            raise ConfigError(f"peers names node {node_id} twice")
        out[node_id] = address.strip()
    return out


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")


def _check_retention(name: str, value: int) -> None:
    if value != -1 and value < 1:
        raise ConfigError(f"{name} must be -1 (no limit) or at least 1, got {value}")


def _check_address(name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be HOST:PORT with a port in [0, 65535], got {value!r}")


_FIELDS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(BrokerConfig)}


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _convert(name: str, raw: Any, source: str) -> Any:
    """Turn a raw value (a string from the environment, or a TOML value) into the field's type."""
    default: Any = _FIELDS[name].default
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, bool) or isinstance(raw, float):
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if isinstance(default, Path):
            return Path(str(raw))
        if not isinstance(raw, str):
            raise ValueError(raw)
        return raw
    except ValueError:
        wanted = "a path" if isinstance(default, Path) else _KIND_NAMES.get(kind, kind.__name__)
        raise ConfigError(f"{name} from {source} must be {wanted}, got {raw!r}") from None


def read_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML file: top-level keys or a [broker] table; unknown keys are errors."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("broker", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [broker] must be a table")
    out: dict[str, Any] = {}
    for key, raw in table.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        out[name] = _convert(name, raw, f"config file {path}")
    return out


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings from `RILLET_<NAME>` environment variables (RILLET_CONFIG is not a setting)."""
    out: dict[str, Any] = {}
    for name in _FIELDS:
        var = ENV_PREFIX + name.upper()
        if var in env and env[var] != "":
            out[name] = _convert(name, env[var], f"environment variable {var}")
    return out


def load(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> BrokerConfig:
    """Merge defaults < config file < environment < flags, then validate.

    `flags` holds only the options given on the command line (None values are ignored);
    `config_file` falls back to `RILLET_CONFIG` from `env`.
    """
    env = {} if env is None else env
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(read_file(config_file))
    merged.update(read_env(env))
    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        merged[name] = _convert(name, raw, f"flag --{name.replace('_', '-')}")
    config = BrokerConfig(**merged)
    config.validate()
    return config


