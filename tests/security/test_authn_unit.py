"""Token files, the authenticator's decisions, half-configured TLS and the client's TLS
messages, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rillet.cli import main as rillet_main
from rillet.client import Credentials
from rillet.client.errors import (
    AuthenticationError,
    AuthorizationError,
    TLSError,
    from_rpc_error,
    tls_problem,
)
from rillet.node.broker import Broker
from rillet.node.config import BrokerConfig, ConfigError, load
from rillet.node.errors import PermissionDeniedError, UnauthenticatedError
from rillet.node.security import tls
from rillet.node.security.authn import Authenticator, matches_any, parse_patterns
from rillet.node.security.tokens import (
    TokenFile,
    TokenFileError,
    TokenTable,
    digest,
    file_line,
    new_token,
)
from tests.rpc_errors import FailedCall

# ---------------------------------------------------------------------------- token file


def test_token_file_maps_tokens_to_principals_and_never_holds_them() -> None:
    alice, node = new_token(), new_token()
    text = f"# comment\n\n{file_line(alice, 'alice')}\n  {file_line(node, 'node-0')}  \n"
    table = TokenTable.parse(text)
    assert table.principal_for(alice) == "alice"
    assert table.principal_for(node) == "node-0"
    assert table.principal_for(new_token()) is None
    assert table.principal_for("") is None
    assert alice not in text and node not in text
    assert len(alice) == 43 and alice != node  # 32 random bytes, URL-safe base64


@pytest.mark.parametrize(("line", "wanted"), [
    ("sha256:abc alice", "64 hex digits"),
    (f"{'0' * 64} alice", "must start with 'sha256:'"),
    (f"sha256:{'0' * 64}", "got 1 fields"),
    (f"sha256:{'0' * 64} alice extra", "got 3 fields"),
    (f"sha256:{'0' * 64} al!ce", "principal 'al!ce'"),
])
def test_token_file_mistakes_name_the_line(line: str, wanted: str) -> None:
    with pytest.raises(TokenFileError) as info:
        TokenTable.parse(f"# header\n{line}\n", "tokens.txt")
    assert "tokens.txt line 2" in str(info.value)
    assert wanted in str(info.value)


def test_token_file_rejects_a_hash_listed_twice() -> None:
    line = file_line("x" * 43, "alice")
    with pytest.raises(TokenFileError, match="line 2: the same token hash appears twice"):
        TokenTable.parse(f"{line}\n{line.replace('alice', 'bob')}\n")


def test_a_running_node_follows_its_token_file(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    old, new = new_token(), new_token()
    path = tmp_path / "tokens"
    path.write_text(file_line(old, "alice") + "\n")
    now = [0.0]
    tokens = TokenFile(path, check_interval_s=1.0, clock=lambda: now[0])
    assert tokens.principal_for(old) == "alice"

    def replace(text: str) -> None:  # as an operator should: write aside, rename over
        aside = tmp_path / "tokens.new"
        aside.write_text(text)
        aside.replace(path)

    replace(file_line(new, "bob") + "\n")
    assert tokens.principal_for(new) is None  # not checked again within the interval
    now[0] = 1.5
    assert tokens.principal_for(new) == "bob"
    assert tokens.principal_for(old) is None  # removed: revoked
    replace("sha256:broken bob\n")
    now[0] = 3.0
    assert tokens.principal_for(new) == "bob"  # a bad edit keeps the last good table
    assert "line 1" in caplog.text and "stay in force" in caplog.text
    path.unlink()
    now[0] = 4.5
    assert tokens.principal_for(new) == "bob"


def test_missing_token_file_stops_the_node_naming_it(tmp_path: Path) -> None:
    config = BrokerConfig(data_dir=tmp_path / "d", token_file=str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match=r"token_file .*nope.txt does not exist"):
        Broker(config)


def test_rillet_token_create_prints_a_token_the_node_accepts(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    result = CliRunner().invoke(rillet_main, ["token", "create", "alice",
                                              "--append-to", str(path)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert TokenTable.load(path).principal_for(token) == "alice"
    assert path.read_text().strip() == f"sha256:{digest(token)} alice"
    assert path.stat().st_mode & 0o077 == 0  # a new file is the owner's only
    bad = CliRunner().invoke(rillet_main, ["token", "create", "has space"])
    assert bad.exit_code == 2


# ---------------------------------------------------------------------------- authenticator


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("user-agent", "x"), ("authorization", f"Bearer {token}")]


def test_authenticator_tokens() -> None:
    alice, node = new_token(), new_token()
    auth = Authenticator(
        tokens=TokenTable({digest(alice): "alice", digest(node): "node-1"}),
        mutual_tls=False, peer_principals=parse_patterns(" node-* , admin"))
    who = auth.authenticate("/rillet.api.v1.Admin/ListTopics", _bearer(alice), {})
    assert (who.name, who.source, who.peer) == ("alice", "token", False)
    peer = auth.authenticate("/rillet.internal.v1.Peer/Exchange", _bearer(node), {})
    assert (peer.name, peer.peer) == ("node-1", True)
    for metadata, wanted in [([], "no credentials"),
                             ([("authorization", f"Basic {alice}")], "must be 'Bearer <token>'"),
                             ([("authorization", "Bearer")], "must be 'Bearer <token>'"),
                             (_bearer(new_token()), "not known to this node")]:
        with pytest.raises(UnauthenticatedError, match=wanted):
            auth.authenticate("/rillet.api.v1.Admin/ListTopics", metadata, {})
    with pytest.raises(PermissionDeniedError, match="principal 'alice' is not a cluster member"):
        auth.authenticate("/rillet.internal.v1.Peer/Exchange", _bearer(alice), {})


def test_authenticator_mutual_tls_uses_the_certificate_common_name() -> None:
    auth = Authenticator(tokens=None, mutual_tls=True, peer_principals=["node-*"])
    who = auth.authenticate("/rillet.api.v1.Log/Produce", [],
                            {"x509_common_name": [b"bob"], "transport_security_type": [b"ssl"]})
    assert (who.name, who.source, who.peer) == ("bob", "certificate", False)
    assert auth.authenticate("/rillet.internal.v1.Peer/Exchange", [],
                             {"x509_common_name": [b"node-2"]}).peer
    with pytest.raises(UnauthenticatedError, match="no subject common name"):
        auth.authenticate("/rillet.api.v1.Log/Produce", [], {"x509_subject": [b"O=x"]})


def test_principal_patterns() -> None:
    patterns = parse_patterns("node-*, admin,,")
    assert patterns == ("node-*", "admin")
    assert matches_any("node-0", patterns) and matches_any("admin", patterns)
    assert not matches_any("administrator", patterns) and not matches_any("nod", patterns)
    assert matches_any("anything", ["*"]) and not matches_any("x", [])


# ---------------------------------------------------------------------------- node settings


@pytest.mark.parametrize(("settings", "wanted"), [
    ({"tls_cert": "c.pem"}, "tls_cert is set but tls_key is not"),
    ({"tls_key": "k.pem"}, "tls_key is set but tls_cert is not"),
    ({"tls_client_ca": "ca.pem"}, "tls_client_ca is set but tls_cert and tls_key are not"),
    ({"tls_peer_ca": "ca.pem"}, "tls_peer_ca is set but tls_cert and tls_key are not"),
    ({"token_file": "t", "tls_cert": "c", "tls_key": "k", "tls_client_ca": "ca"},
     "token_file and tls_client_ca are both set"),
    ({"token_file": "t", "peers": "0=127.0.0.1:1,1=127.0.0.2:1", "peer_token": "x"},
     "peer_principals must name the cluster's nodes"),
    ({"tls_cert": "c", "tls_key": "k", "peers": "0=127.0.0.1:1,1=127.0.0.2:1"},
     "needs tls_peer_ca"),
    ({"token_file": "t", "peers": "0=127.0.0.1:1,1=127.0.0.2:1", "peer_principals": "node-*"},
     "peer_token is needed"),
])
def test_half_configured_security_is_refused(settings: dict[str, str], wanted: str) -> None:
    with pytest.raises(ConfigError, match=wanted):
        load(settings, {})


def test_tls_files_are_checked_at_startup_naming_setting_and_file(tmp_path: Path) -> None:
    pem = tmp_path / "ok.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    missing = tmp_path / "missing.key"
    with pytest.raises(ConfigError, match=f"tls_key: file {missing} does not exist"):
        tls.server_credentials(BrokerConfig(tls_cert=str(pem), tls_key=str(missing)))
    with pytest.raises(ConfigError, match=f"tls_client_ca: file {junk} is not PEM"):
        tls.server_credentials(BrokerConfig(tls_cert=str(pem), tls_key=str(pem),
                                            tls_client_ca=str(junk)))
    with pytest.raises(ConfigError, match=f"tls_cert: file {tmp_path} cannot be read"):
        tls.read_pem("tls_cert", str(tmp_path))
    assert tls.server_credentials(BrokerConfig()) is None


# ---------------------------------------------------------------------------- client side


def test_client_credentials_default_from_the_environment() -> None:
    env = {"RILLET_TLS_CA": "ca.pem", "RILLET_TOKEN": "secret-token", "RILLET_TLS_CERT": ""}
    creds = Credentials.from_env(env)
    assert creds == Credentials(tls_ca="ca.pem", token="secret-token")
    assert creds.tls and "secret-token" not in repr(creds)
    assert not Credentials.from_env({}).tls


def test_client_credentials_name_the_file_or_option_that_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--tls-ca: file .*nope\.pem does not exist"):
        Credentials(tls_ca=str(tmp_path / "nope.pem")).channel("127.0.0.1:1")
    with pytest.raises(ValueError, match="needs both --tls-cert and --tls-key"):
        Credentials(tls_cert="c.pem").channel("127.0.0.1:1")


def test_tls_failures_say_which_side_refused_what() -> None:
    verify = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls "
              "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
              "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer")
    closed = ("failed to connect to all addresses; last error: UNAVAILABLE: "
              "ipv4:127.0.0.1:1: Socket closed")
    plain = "Tls handshake failed (TSI_PROTOCOL_FAILURE): ... WRONG_VERSION_NUMBER: x"
    assert "not signed by the CA in --tls-ca" in str(
        tls_problem(verify, tls=True, client_cert=False))
    assert "does not speak TLS" in str(tls_problem(plain, tls=True, client_cert=False))
    assert "requires TLS" in str(tls_problem(closed, tls=False, client_cert=False))
    assert "requires a client certificate" in str(
        tls_problem(closed, tls=True, client_cert=False))
    assert "refused the client certificate" in str(
        tls_problem(closed, tls=True, client_cert=True))
    assert tls_problem("Connection refused", tls=True, client_cert=True) is None
    assert issubclass(TLSError, Exception) and not TLSError.retriable


def test_auth_statuses_map_to_their_own_client_errors() -> None:
    import grpc

    err = from_rpc_error(FailedCall(grpc.StatusCode.UNAUTHENTICATED, "no credentials"))
    assert isinstance(err, AuthenticationError) and "no credentials" in str(err)
    assert isinstance(from_rpc_error(FailedCall(grpc.StatusCode.PERMISSION_DENIED, "no")),
                      AuthorizationError)
