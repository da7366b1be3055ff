"""``crmsync contact EMAIL|ID``: one contact's story, as the console's Contact page."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..cli import EXIT_FAILED, Context, cli
from ..runtime import open_store


@cli.command()
@click.argument("who", metavar="EMAIL|ID")
@click.option("--limit", default=1000, show_default=True,
              help="At most this many journal entries and events.")
@click.pass_obj
def contact(obj: Context, who: str, limit: int) -> None:
    """Show what crmsync holds about one contact: its ids per system, status and groups
    per list, the fields last sent, the whole journal with sources, the events received,
    dead letters and failed writes.

    EMAIL may be a current or former address; ID a record id of either side or a
    contact key. Exit 1 when no contact (or more than one) matches.
    """
    from ..state import read

    config = obj.config()
    store = open_store(config)
    try:
        matches = read.find_contacts(store, who, systems=[
            side.connector for side in (config.crm, config.esp) if side is not None])
        story = read.contact_story(store, matches[0]["key"], limit=limit,
                                   report_dir=config.path(config.sync.report_dir)) \
            if len(matches) == 1 else None
    finally:
        store.close()
    data: dict[str, Any] = {"query": who, "matches": matches}
    if story is not None:
        data |= story

    def render() -> None:
        if story is None:
            _render_matches(obj, who, matches)
        else:
            _render_story(obj, story)

    obj.emit(data, render)
    if story is None:
        if not obj.as_json:
            message = (f"no contact matches {who!r}: give an address or a record id "
                       "crmsync has synced" if not matches else
                       f"{len(matches)} contacts match {who!r}: give one of their keys")
            click.echo(f"crmsync: {message}", err=True)
        sys.exit(EXIT_FAILED)


def _render_matches(obj: Context, who: str, matches: list[dict[str, Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    if not matches:
        return
    table = Table(title=Text(f"contacts matching {who}"))
    for column in ("key", "email", "matched by"):
        table.add_column(column)
    for m in matches:
        table.add_row(Text(m["key"]), Text(m["email"]), Text(m["matched"]))
    obj.console.print(table)


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]],
           empty: str = "none") -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        # Text, never markup: a name from the CRM could hold "[red]" or worse
        table.add_row(*(Text("" if value is None else str(value)) for value in row))
    if not rows:
        table.add_row(Text(empty), *([""] * (len(columns) - 1)))
    return table


def _render_story(obj: Context, story: dict[str, Any]) -> None:
    from rich.text import Text

    c = story["contact"]
    head = Text(f"{c['email']}  (contact {c['key']}, last change {c['updated_at']})")
    if c["former_emails"]:
        head.append(f"\nformer addresses: {', '.join(c['former_emails'])}")
    if c["deleted"]:
        head.append("\ndeleted: its deletion was sent to the ESP")
    print_ = obj.console.print
    print_(head)
    print_(_table("identities", ("system", "record id"),
                  [(i["system"], i["record_id"]) for i in story["identities"]]))
    print_(_table("status per list", ("list", "status", "groups", "CRM says", "since",
                                      "source"),
                  [(s["list_id"], s["status"], ", ".join(s["groups"]), s["crm_status"],
                    s["changed_at"], s["source"]) for s in story["lists"]], "on no list"))
    print_(_table("fields last sent to the ESP", ("field", "value"),
                  sorted(story["fields"].items())))
    print_(_table("journal", ("when", "list", "change", "applied to", "source", "reason",
                              "run / event"),
                  [(e["at"], e["list_id"], f"{e['old_status'] or '-'} -> {e['new_status']}",
                    e["applied_to"], e["source"], e["reason"],
                    " ".join(filter(None, (e["run_id"], e["event_id"]))))
                   for e in story["journal"]]))
    print_(_table("events received", ("#", "from", "received", "status", "attempts",
                                      "last error"),
                  [(e["id"], e["endpoint"], e["received_at"], e["status"], e["attempts"],
                    e["last_error"]) for e in story["inbox"]]))
    print_(_table("dead letters", ("#", "from", "died", "attempts", "replayed", "error"),
                  [(d["id"], f"{d['origin']} {d['endpoint']}", d["died_at"], d["attempts"],
                    "yes" if d["replayed"] else "no", d["error"])
                   for d in story["dead_letters"]]))
    print_(_table("failed writes", ("where", "side", "list", "run", "error"),
                  [(f["source"], f["side"], f["list_id"], f["run_id"], f["error"])
                   for f in story["failed_writes"]]))
