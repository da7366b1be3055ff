"""`crmsync migrate-state --to postgresql+psycopg://...` (issue 16 point 7): a SQLite
state store that went through real syncs is copied into an empty PostgreSQL database;
a diff sync on the copy then sends nothing (nothing was lost), the consent journal still
verifies, and new rows continue after the copied ids. Refused into a database holding
crmsync state, and while a run holds the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, make_url, select

from crmsync.cli import cli
from crmsync.state import StateStore
from crmsync.state.copy import TABLES

from .conftest import Pair, _seeded_pair, fresh_postgres, write_config

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp", "CRMSYNC_PLUGINS": ""}


def run(pair: Pair, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(pair.tmp / "crmsync.toml"), *args],
                              env=ENV)


def counts(url: str) -> dict[str, int]:
    store = StateStore(url)
    try:
        with store.begin() as conn:
            return {table.name: int(conn.execute(select(func.count()).select_from(table))
                                    .scalar_one()) for table in TABLES}
    finally:
        store.close()


@pytest.fixture
def synced(tmp_path: Path) -> Pair:
    """A SQLite store after two real runs: contacts, ids, snapshots, journal and its
    seals, runs, files, cursors."""
    pair = _seeded_pair(tmp_path, "sqlite:///state.db")
    assert run(pair, "sync").exit_code == 0
    pair.esp_import()  # files mode: the ESP imports what crmsync uploaded
    pair.crm.add("eve@example.com", fields={"OptOut": "false", "FirstName": "Eve"})
    pair.esp_unsubscribe("ann@example.com")
    assert run(pair, "sync").exit_code == 0
    pair.esp_import()
    return pair


def test_a_synced_store_moves_and_a_diff_sync_on_postgresql_sends_nothing(
        synced: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = synced
    sqlite_url = pair.config.state_url()
    before = counts(sqlite_url)
    assert before["crmsync_journal"] >= 5 and before["crmsync_contacts"] == 5
    with fresh_postgres() as url:
        result = run(pair, "migrate-state", "--to", url)
        assert result.exit_code == 0, result.output
        printed = make_url(url)._replace(password=None).render_as_string(hide_password=False)
        assert result.stdout.splitlines()[0] == (
            f"copied {sum(before.values()):,} rows into {printed}; row counts verified")
        assert f'url = "{printed}"' in result.stdout  # what to write in crmsync.toml
        assert counts(url) == before
        assert counts(sqlite_url) == before  # the SQLite file is left as it was

        # crmsync.toml as the command says, the password where libpq looks for it
        monkeypatch.setenv("PGPASSWORD", make_url(url).password or "")
        write_config(pair.tmp, state=printed)
        files = sorted((pair.space / "in").rglob("*"))
        result = run(pair, "--json", "sync")
        assert result.exit_code == 0, result.output
        stats = json.loads(result.stdout)
        assert (stats["status"], stats["esp_written"], stats["crm_written"],
                stats["failed"]) == ("succeeded", 0, 0, 0)
        assert sorted((pair.space / "in").rglob("*")) == files  # no import file sent
        assert pair.esp_status("ann@example.com") == "unsubscribed"
        after = counts(url)
        assert after["crmsync_journal"] == before["crmsync_journal"]
        assert after["crmsync_runs"] == before["crmsync_runs"] + 1

        # the chain sealed on SQLite verifies on PostgreSQL, and goes on from there
        pair.crm.add("fay@example.com", fields={"OptOut": "false", "FirstName": "Fay"})
        result = run(pair, "--json", "sync")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["esp_written"] == 1
        result = run(pair, "journal", "verify")
        assert result.exit_code == 0, result.output
        assert counts(url)["crmsync_journal"] > before["crmsync_journal"]


def test_refuses_a_database_that_holds_crmsync_state(synced: Pair) -> None:
    with fresh_postgres() as url:
        assert run(synced, "migrate-state", "--to", url).exit_code == 0
        copied = counts(url)
        result = run(synced, "migrate-state", "--to", url)
        assert result.exit_code == 2
        assert result.stderr.startswith("crmsync: error: the target database already holds "
                                        "crmsync state (")
        assert counts(url) == copied


@pytest.mark.parametrize("lock", ["batch", "serve"])
def test_refuses_while_a_run_or_serve_holds_the_store(synced: Pair, lock: str) -> None:
    holder = StateStore(synced.config.state_url())
    try:
        with fresh_postgres() as url, holder.exclusive(lock):
            result = run(synced, "migrate-state", "--to", url)
            assert result.exit_code == 3
            assert result.stderr.startswith(
                f"crmsync: error: another crmsync process holds the {lock!r} lock")
            assert sum(counts(url).values()) == 0
    finally:
        holder.close()


def test_the_target_must_be_postgresql(synced: Pair) -> None:
    result = run(synced, "migrate-state", "--to", f"sqlite:///{synced.tmp / 'other.db'}")
    assert result.exit_code == 2
    assert result.stderr.startswith("crmsync: error: migrate-state --to takes a PostgreSQL "
                                    "URL")
