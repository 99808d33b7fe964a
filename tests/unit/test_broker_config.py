"""Broker settings: flags > environment > config file > defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rillet.node import config as cfg


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rillet.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    c = cfg.load({}, {})
    assert (c.node_id, c.listen, c.data_dir, c.max_batch_bytes) == (
        0, "127.0.0.1:9091", Path(".rillet-data"), 1024 * 1024)
    assert c.address == "127.0.0.1:9091"


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_id = 1\nlisten = "127.0.0.1:7001"\ndata-dir = "/f"\n'
                           "max_batch_bytes = 2097152\n")
    env = {"RILLET_LISTEN": "127.0.0.1:7002", "RILLET_DATA_DIR": "/e"}
    flags = {"data_dir": "/flag", "node_id": None}
    c = cfg.load(flags, env, path)
    assert c.node_id == 1  # file (the flag was not given, no env)
    assert c.listen == "127.0.0.1:7002"  # env beats file
    assert c.data_dir == Path("/flag")  # flag beats env and file
    assert c.max_batch_bytes == 2 * 1024 * 1024  # file beats default
    assert c.retention_ms == cfg.BrokerConfig().retention_ms  # default


def test_config_file_from_environment_and_broker_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nnode_id = 4\n")
    assert cfg.load({}, {"RILLET_CONFIG": str(path)}).node_id == 4


@pytest.mark.parametrize(("flags", "env", "message"), [
    ({"listen": "nohost"}, {}, "listen must be HOST:PORT"),
    ({"listen": "127.0.0.1:99999"}, {}, "listen must be HOST:PORT"),
    ({}, {"RILLET_NODE_ID": "abc"}, "node_id from environment variable RILLET_NODE_ID"),
    ({"node_id": -1}, {}, "node_id must be in"),
    ({"max_batch_bytes": 10}, {}, "max_batch_bytes must be in [1024,"),
    ({}, {"RILLET_RETENTION_MS": "0"}, "retention_ms must be -1"),
    ({"log_level": "LOUD"}, {}, "log_level must be"),
    ({"bogus": 1}, {}, "unknown setting 'bogus'"),
])
def test_bad_values_name_the_setting_and_source(flags, env, message) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(flags, env)
    assert message in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load({}, {}, tmp_path / "missing.toml")
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        cfg.load({}, {}, write(tmp_path, "node_id = = 1"))
    with pytest.raises(cfg.ConfigError, match="unknown setting 'colour'"):
        cfg.load({}, {}, write(tmp_path, 'colour = "blue"'))
    with pytest.raises(cfg.ConfigError, match=r"node_id from config file .* must be an integer"):
        cfg.load({}, {}, write(tmp_path, 'node_id = "one"'))


def test_peer_dial_overrides_only_node_to_node_addresses() -> None:
    peers = "0=127.0.0.1:9091,1=127.0.0.2:9091,2=127.0.0.3:9091"
    c = cfg.load({"peers": peers, "peer_dial": "2=127.0.0.1:40002"}, {}, None)
    assert c.peer_map[2] == "127.0.0.3:9091"
    assert c.dial_map == {0: "127.0.0.1:9091", 1: "127.0.0.2:9091", 2: "127.0.0.1:40002"}
    with pytest.raises(cfg.ConfigError, match=r"peer_dial names nodes that peers does not: \[7\]"):
        cfg.load({"peers": peers, "peer_dial": "7=127.0.0.1:1"}, {}, None)
    with pytest.raises(cfg.ConfigError, match="peer_dial needs peers"):
        cfg.load({"peer_dial": "1=127.0.0.1:1"}, {}, None)
