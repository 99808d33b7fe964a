"""Bearer tokens: how they are made, hashed and looked up.

A token is 32 random bytes in URL-safe base64 (43 characters). The node never stores one: the
token file (`token_file`) holds only SHA-256 digests, one per line, each with the principal it
stands for::

    # comments and blank lines are ignored
    sha256:3f1c...e9 alice
    sha256:a0b2...41 node-0

An unsalted, single SHA-256 is enough because the tokens are random with 256 bits of entropy:
there is no dictionary to attack and no two tokens share a hash, so a salt or a slow hash (made
for low-entropy passwords) would only cost time on every call. Lookups compare digests with
`hmac.compare_digest` so the time taken says nothing about how much of a digest matched.

`rillet token create PRINCIPAL` prints a new token once, and the line to add to the file.
A running node follows changes to the file (`TokenFile`): adding or removing a line takes
effect within a second, no restart needed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "sha256:"
TOKEN_BYTES = 32
#: A principal name: what ACLs and peer_principals match against, and what logs show.
PRINCIPAL_RE = re.compile(r"^[A-Za-z0-9._@:/=+-]{1,256}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and the line."""


def new_token() -> str:
    """A fresh random token (URL-safe base64 of 32 random bytes, no padding)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> str:
    """The lowercase hex SHA-256 of a token, as the token file stores it (after "sha256:")."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def file_line(token: str, principal: str) -> str:
    """The token-file line that maps `token` to `principal`."""
    check_principal(principal)
    return f"{PREFIX}{digest(token)} {principal}"


def check_principal(name: str) -> None:
    """Raise ValueError unless `name` is a usable principal name."""
    if not PRINCIPAL_RE.match(name):
        raise ValueError(f"principal {name!r} must be 1-256 characters of letters, digits "
                         f"and . _ @ : / = + -")


class TokenTable:
    """Token digests -> principals, as read from one token file."""

    def __init__(self, by_digest: dict[str, str], path: str = "") -> None:
        self.path = path
        self.by_digest = dict(by_digest)
        self._entries = [(k.encode("ascii"), v) for k, v in by_digest.items()]

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """Read and check a token file; TokenFileError names the file and line of a mistake."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenFileError(f"token_file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"token_file {path} cannot be read: {exc}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, path: str = "<text>") -> TokenTable:
        table: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            where = f"token_file {path} line {number}"
            if len(parts) != 2:
                raise TokenFileError(f"{where}: expected 'sha256:<64 hex digits> PRINCIPAL', "
                                     f"got {len(parts)} fields")
            hashed, principal = parts
            if not hashed.startswith(PREFIX):
                raise TokenFileError(f"{where}: the hash must start with {PREFIX!r} (the file "
                                     f"holds hashes, never tokens; see `rillet token create`)")
            hexdigest = hashed[len(PREFIX):].lower()
            if not _HEX_RE.match(hexdigest):
                raise TokenFileError(f"{where}: {PREFIX} must be followed by 64 hex digits")
            try:
                check_principal(principal)
            except ValueError as exc:
                raise TokenFileError(f"{where}: {exc}") from None
            if hexdigest in table:
                raise TokenFileError(f"{where}: the same token hash appears twice")
            table[hexdigest] = principal
        return cls(table, path)

    def principal_for(self, token: str) -> str | None:
        """The principal of `token`, or None when the file does not list it.

        Every stored digest is compared with `hmac.compare_digest`, all of them every time:
        how long the check takes says nothing about which entry (if any) matched or how much
        of it. A token file holds tens of entries, so the loop costs microseconds per call.
        """
        wanted = digest(token).encode("ascii")
        found: str | None = None
        for hexdigest, principal in self._entries:
            if hmac.compare_digest(wanted, hexdigest):
                found = principal
        return found

    def __len__(self) -> int:
        return len(self.by_digest)


class TokenFile:
    """A token file that follows its changes: tokens are added and revoked without a restart.

    At most once per `check_interval_s`, a lookup compares the file's identity (inode, size,
    modification time) with what was loaded; when it changed, the file is read again. A file
    that no longer parses (or is gone) keeps the last good table in force and is logged once
    per change, so a half-written edit cannot lock everyone out. Replace the file atomically
    (write a new one, rename it over the old) and every node picks it up within a second.
    """

    def __init__(self, path: str | Path, *, check_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._signature = self._stat()
        self.table = TokenTable.load(self.path)  # at startup a bad file stops the node
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def current(self) -> TokenTable:
        """The table in force, re-read first if the file changed since the last check."""
        now = self._clock()
        if now - self._checked < self.check_interval_s:
            return self.table
        self._checked = now
        signature = self._stat()
        if signature == self._signature:
            return self.table
        self._signature = signature
        try:
            self.table = TokenTable.load(self.path)
        except TokenFileError as exc:
            log.error("%s; the %d tokens loaded before stay in force", exc, len(self.table))
        else:
            log.info("token_file %s reloaded: %d tokens", self.path, len(self.table))
        return self.table

    def principal_for(self, token: str) -> str | None:
        """As TokenTable.principal_for, on the current contents of the file."""
        return self.current().principal_for(token)
