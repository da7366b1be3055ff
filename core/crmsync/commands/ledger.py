"""``crmsync forget``, ``crmsync journal verify`` and ``crmsync proof``: erasure and the
consent ledger (see crmsync.state.ledger and docs/operations.md)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from typing import Any

import click
from rich.markup import escape
from sqlalchemy import select

from ..cli import EXIT_FAILED, Context, cli, email_param
from ..config import Config
from ..errors import ConfigError, RemoteError
from ..logs import mask_emails
from ..model import Change, Op
from ..runtime import open_side, open_store
from ..state import StateStore
from ..state import schema as t
from ..state.ledger import erase, find_person, ledger_key, proof, verify

_NOT_THERE = {"404", "not_found", "entity_is_deleted", "invalid_cross_reference_key"}


def _key(config: Config, store: StateStore) -> bytes:
    """The ledger key; created on first use only while nothing was sealed with another."""
    with store.begin() as conn:
        sealed = conn.execute(select(t.journal_seals.c.journal_id).limit(1)).first()
        suppressed = conn.execute(select(t.suppressions.c.address_hash).limit(1)).first()
    return ledger_key(config, create=sealed is None and suppressed is None)


def _delete_at(connector: Any, email: str, record_ids: list[str]) -> str:
    """Delete ``email``'s records at one side; "deleted", "not there", or raise."""
    changes = [Change(email=email, ids={connector.name: rid}, op=Op.DELETE,
                      source="crmsync:forget", reason="erasure request")
               for rid in record_ids] or [
        Change(email=email, op=Op.DELETE, source="crmsync:forget", reason="erasure request")]
    outcome = "not there"
    for result in connector.write(changes):
        if result.ok:
            outcome = "deleted"
            continue
        code = str(result.code or "").lower()
        if code in _NOT_THERE or "not found" in str(result.error).lower() or \
                "no such" in str(result.error).lower() or " is not in " in str(result.error):
            continue
        raise RemoteError(
            f"{connector.name} refused to delete the person: "
            f"{mask_emails(str(result.error))} [{result.code}]: nothing was erased in "
            "crmsync's state; fix the cause and run `crmsync forget` again",
            code=result.code, retryable=result.retryable)
    return outcome


def _scrub_reports(config: Config, email: str) -> int:
    """Drop the rows naming ``email`` from the failed-records reports; how many."""
    folder = config.path(config.sync.report_dir)
    removed = 0
    for path in sorted(folder.glob("failed-*.csv")) if folder.is_dir() else []:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        kept = [row for row in rows if not any(email in cell.lower() for cell in row)]
        if len(kept) != len(rows):
            removed += len(rows) - len(kept)
            out = io.StringIO()
            csv.writer(out).writerows(kept)
            path.write_text(out.getvalue(), encoding="utf-8")
    return removed


@cli.command()
@click.argument("email", callback=email_param)
@click.option("--crm", "at_crm", is_flag=True,
              help="Delete the person's record(s) in the CRM too.")
@click.option("--yes", is_flag=True, help="Erase without asking (needed without a terminal).")
@click.pass_obj
def forget(obj: Context, email: str, at_crm: bool, yes: bool) -> None:
    """Erase EMAIL (GDPR right to erasure): at the ESP, with --crm in the CRM, and in
    crmsync's state.

    Identities, snapshots, fields, queued writes, inbox events and dead letters about
    the person are deleted; journal entries are kept, pseudonymised (a keyed hash
    replaces the address), so the consent history still proves what happened; a hashed
    suppression keeps the address from being sent to the ESP again unless the person
    opts in anew through the ESP. See docs/operations.md, "Erasure".
    """
    config = obj.config()
    if obj.mask_emails is None:  # erasing someone is no time to log their address
        obj.mask_emails = True
        obj.configure_logging(config)
    if config.esp is None or (at_crm and config.crm is None):
        raise ConfigError(f"{obj.config_path} needs [esp]{' and [crm]' if at_crm else ''} "
                          "to forget someone")
    if not yes:
        if obj.as_json or not sys.stdin.isatty():
            raise ConfigError("forget erases the person for good: pass --yes to confirm")
        click.confirm(f"Erase {email} at the ESP{', in the CRM' if at_crm else ''} and in "
                      "crmsync's state, for good?", abort=True)
    store = open_store(config)
    try:
        key = _key(config, store)
        person = find_person(store, key, email)
        result: dict[str, Any] = {"pseudonym": person.alias, "known": person.known}
        with open_side(config, "esp") as esp, (
                open_side(config, "crm") if at_crm else contextlib.nullcontext()) as crm:
            for side in (esp, crm):
                if side is not None and not side.capabilities.deletes:
                    raise ConfigError(
                        f"the {side.name} connector cannot delete records: erase the "
                        f"person in {side.name} by hand"
                        + (" and run forget without --crm" if side is crm else ""))
            result["esp"] = _delete_at(esp, email, person.record_ids.get(esp.name, []))
            if crm is not None:
                result["crm"] = _delete_at(crm, email, person.record_ids.get(crm.name, []))
        result["state"] = erase(store, key, person).counts
        result["report_rows_removed"] = _scrub_reports(config, email)
    finally:
        store.close()

    def render() -> None:
        obj.console.print(f"erased: now {result['pseudonym']} in the journal", highlight=False)
        obj.console.print(f"ESP: {result['esp']}" + (f"; CRM: {result['crm']}"
                                                       if "crm" in result else ""))
        obj.console.print("state: " + ", ".join(f"{k} {v}" for k, v in result["state"].items()))
        if result["report_rows_removed"]:
            obj.console.print(f"failed-records reports: {result['report_rows_removed']} "
                              "row(s) removed")

    obj.emit(result, render)


@cli.group()
def journal() -> None:
    """The consent journal (hash-chained, see docs/operations.md)."""


@journal.command("verify")
@click.pass_obj
def journal_verify(obj: Context) -> None:
    """Seal new entries, then check the whole chain: exit 1 naming each entry that was
    edited, deleted, inserted or reordered."""
    config = obj.config()
    store = open_store(config)
    try:
        report = verify(store, _key(config, store))
    finally:
        store.close()
    data = report.as_dict()

    def render() -> None:
        if report.ok:
            obj.console.print(f"journal verified: {report.entries} entries sealed, head "
                              f"{report.head}" + (f"; {report.unsealed} not sealed yet "
                                                  "(a run is writing)" if report.unsealed
                                                  else ""), highlight=False)
            return
        obj.console.print(f"[red]journal NOT verified[/red]: {len(report.problems)} "
                          f"problem(s) in {report.entries} entries")
        for problem in report.problems:
            obj.console.print(f"  {escape(problem['detail'])}", highlight=False)

    obj.emit(data, render)
    if not report.ok:
        sys.exit(EXIT_FAILED)


@cli.command("proof")
@click.argument("email", callback=email_param)
@click.pass_obj
def proof_command(obj: Context, email: str) -> None:
    """Print EMAIL's consent history per list as JSON: when, from which side, what
    changed, each entry with its seal (digest, previous hash, hash), and the chain's
    verification. Works for an erased person too (by the keyed hash of the address).
    Exit 1 when the chain does not verify."""
    config = obj.config()
    store = open_store(config)
    try:
        data = proof(store, _key(config, store), email)
    finally:
        store.close()
    click.echo(json.dumps(data, indent=None if obj.as_json else 2, sort_keys=True))
    if not data["chain"]["ok"]:
        sys.exit(EXIT_FAILED)
