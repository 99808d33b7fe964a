"""The principal of the call being served.

The authentication interceptor (node/security/authn.py) works out who calls before any handler
runs and binds it here; handlers and the authorizer read it with `current()`. A context variable
and not a handler argument: every servicer method keeps its generated signature, and grpc.aio
runs each call in its own task, so one call's principal never leaks into another's.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Literal

Source = Literal["certificate", "token", "anonymous"]


@dataclass(frozen=True)
class Principal:
    """An authenticated identity: a certificate subject's common name or a token's principal."""

    name: str
    source: Source
    # A cluster member (listed in peer_principals): peer links accept it, ACLs do not apply.
    peer: bool = False


#: Who calls when the node authenticates no one (no mTLS, no token file).
ANONYMOUS = Principal("anonymous", "anonymous")

_CURRENT: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "rillet_principal", default=ANONYMOUS)


def current() -> Principal:
    """The principal of the call this task serves (ANONYMOUS outside any call)."""
    return _CURRENT.get()


def bind(principal: Principal) -> contextvars.Token[Principal]:
    """Make `principal` the caller for the rest of this task (the interceptor's job)."""
    return _CURRENT.set(principal)
