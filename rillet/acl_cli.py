"""`rillet acl add|list|remove`: manage the allow rules that decide, when a node runs with
`--acl`, who may do what (docs/security.md).

    rillet acl add --principal alice --operation produce --topic orders
    rillet acl add --principal '*' --operation consume --topic public. --prefix
    rillet acl add --principal billing --operation group --group billing
    rillet acl add --principal ops --operation cluster_admin --cluster
    rillet acl list [--principal alice] [--topic orders | --group G | --cluster] [--format json]
    rillet acl remove --principal alice --operation produce --topic orders

Every command needs a principal allowed cluster_admin on the cluster (or a super user), and
takes the usual client options (--bootstrap, --timeout, and the TLS/token options).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from rillet.cli import admin_client, client_options, fail, run_command
from rillet.client.admin import ACL_OPERATIONS, Acl

F = TypeVar("F", bound=Callable[..., Any])


def _resource_options(f: F) -> F:
    f = click.option("--prefix", is_flag=True,
                     help="The name is a prefix: the rule covers every topic or group whose "
                     "name starts with it.")(f)
    f = click.option("--cluster", "on_cluster", is_flag=True,
                     help="The rule is about the cluster (operation cluster_admin).")(f)
    f = click.option("--group", "group_name", default=None, metavar="GROUP",
                     help="The rule is about this consumer group (or prefix).")(f)
    f = click.option("--topic", "topic_name", default=None, metavar="TOPIC",
                     help="The rule is about this topic (or prefix).")(f)
    return f


def _resource(topic_name: str | None, group_name: str | None, on_cluster: bool,
              required: bool) -> tuple[str, str]:
    """(resource type, name) from --topic / --group / --cluster; exactly one (or none when
    not `required`)."""
    given = [(t, n) for t, n, on in (("topic", topic_name or "", topic_name is not None),
                                     ("group", group_name or "", group_name is not None),
                                     ("cluster", "", on_cluster)) if on]
    if len(given) > 1:
        raise click.UsageError("give only one of --topic, --group and --cluster")
    if not given:
        if required:
            raise click.UsageError("say what the rule is about: --topic NAME, --group NAME "
                                   "or --cluster")
        return "", ""
    return given[0]


def _rule(principal: str, operation: str, topic_name: str | None, group_name: str | None,
          on_cluster: bool, prefix: bool) -> Acl:
    rtype, name = _resource(topic_name, group_name, on_cluster, required=True)
    if prefix and rtype == "cluster":
        raise click.UsageError("--prefix goes with --topic or --group, not --cluster")
    return Acl(principal, operation, rtype, name, prefix)


def _text(acl: Acl) -> str:
    if acl.resource_type == "cluster":
        target = "cluster"
    else:
        target = f"{acl.resource_type}={acl.resource_name}{'*' if acl.prefix else ''}"
    return f"{acl.principal}\t{acl.operation}\t{target}"


def _doc(acl: Acl) -> dict[str, Any]:
    return {"principal": acl.principal, "operation": acl.operation,
            "resource_type": acl.resource_type, "resource_name": acl.resource_name,
            "pattern": "prefix" if acl.prefix else "literal"}


_principal = click.option("--principal", required=True, metavar="NAME",
                          help="Certificate common name or token principal; '*' for any "
                          "authenticated principal.")
_operation = click.option("--operation", required=True,
                          type=click.Choice(ACL_OPERATIONS, case_sensitive=False))


@click.group()
def acl() -> None:
    """Access control: allow rules per principal (used when nodes run with --acl)."""


@acl.command("add")
@_principal
@_operation
@_resource_options
@client_options
def acl_add(principal: str, operation: str, topic_name: str | None, group_name: str | None,
            on_cluster: bool, prefix: bool, bootstrap: str, timeout: float) -> None:
    """Allow PRINCIPAL to do OPERATION on a topic, a group (name or --prefix) or the cluster."""
    rule = _rule(principal, operation, topic_name, group_name, on_cluster, prefix)
    admin = admin_client(bootstrap, timeout)

    async def go() -> None:
        async with admin:
            added = await admin.add_acl(rule)
        click.echo(f"{'added' if added else 'already present'}: {_text(rule)}", err=True)
    run_command(go())


@acl.command("remove")
@_principal
@_operation
@_resource_options
@client_options
def acl_remove(principal: str, operation: str, topic_name: str | None,
               group_name: str | None, on_cluster: bool, prefix: bool, bootstrap: str,
               timeout: float) -> None:
    """Remove the rule with exactly these fields (exit 1 when there is none)."""
    rule = _rule(principal, operation, topic_name, group_name, on_cluster, prefix)
    admin = admin_client(bootstrap, timeout)

    async def go() -> bool:
        async with admin:
            return await admin.remove_acl(rule)
    if not run_command(go()):
        fail(f"no such rule: {_text(rule)} (see `rillet acl list`)")
    click.echo(f"removed: {_text(rule)}", err=True)


@acl.command("list")
@click.option("--principal", default="", metavar="NAME", help="Only this principal's rules.")
@click.option("--topic", "topic_name", default=None, metavar="TOPIC",
              help="Only rules about this topic (naming it, or a prefix of it).")
@click.option("--group", "group_name", default=None, metavar="GROUP",
              help="Only rules about this group (naming it, or a prefix of it).")
@click.option("--cluster", "on_cluster", is_flag=True, help="Only rules about the cluster.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@client_options
def acl_list(principal: str, topic_name: str | None, group_name: str | None,
             on_cluster: bool, fmt: str, bootstrap: str, timeout: float) -> None:
    """Rules, one per line: PRINCIPAL, OPERATION, RESOURCE (a trailing * marks a prefix)."""
    rtype, name = _resource(topic_name, group_name, on_cluster, required=False)
    admin = admin_client(bootstrap, timeout)

    async def go() -> list[Acl]:
        async with admin:
            return await admin.list_acls(principal, rtype, name)
    rules = run_command(go())
    if fmt == "json":
        click.echo(json.dumps([_doc(r) for r in rules]))
        return
    for r in rules:
        click.echo(_text(r))
