"""``crmsync migrate-state``: move the state store from SQLite to PostgreSQL
(crmsync.state.copy; docs/scale-out.md, "Moving from SQLite to PostgreSQL")."""

from __future__ import annotations

import re
from typing import Any

import click

from ..cli import Context, cli
from ..runtime import open_store
from ..state import StateStore
from ..state.copy import copy_store


def _without_password(url: str) -> str:
    """The URL as it belongs in crmsync.toml: no password (libpq reads PGPASSWORD or
    ~/.pgpass for a URL without one)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1@", url)


@cli.command("migrate-state")
@click.option("--to", "target_url", required=True, metavar="URL",
              help="The empty PostgreSQL database: postgresql+psycopg://user@host/db.")
@click.option("--chunk", default=5000, show_default=True, type=click.IntRange(1),
              help="Rows read and written at a time.")
@click.pass_obj
def migrate_state(obj: Context, target_url: str, chunk: int) -> None:
    """Copy the SQLite state store ([state] url) into an empty PostgreSQL database.

    Table by table in chunks, in one transaction committed only once every table's row
    count matches; refused while a sync or `crmsync serve` uses the state store, and
    into a database that already holds crmsync state. The SQLite file is left as it
    was. Then set [state] url in crmsync.toml to the new database (this command prints
    the line). See docs/scale-out.md.
    """
    config = obj.config()
    source = open_store(config)
    try:
        target = StateStore(target_url, schema=config.state_schema(target_url))
        try:
            def done(name: str, rows: int) -> None:
                if not obj.as_json:
                    click.echo(f"{name}: {rows:,} rows", err=True)

            counts = copy_store(source, target, chunk=chunk, on_table=done)
        finally:
            target.close()
    finally:
        source.close()
    url = _without_password(target_url)
    data: dict[str, Any] = {"rows": counts, "total": sum(counts.values()), "state_url": url,
                            "config": str(obj.config_path)}

    def render() -> None:
        click.echo(f"copied {data['total']:,} rows into {url}; row counts verified")
        click.echo(f"now set in {obj.config_path}:\n\n[state]\nurl = \"{url}\"\n")
        click.echo("with the database password in PGPASSWORD or ~/.pgpass (not in the "
                   "TOML), and start crmsync again; keep the SQLite file until a sync on "
                   "PostgreSQL went through")

    obj.emit(data, render)
