"""The consent ledger (issue 17 point 8): the journal is sealed at the end of each run,
`crmsync journal verify` names each edited, deleted, inserted or reordered entry, and
`crmsync proof EMAIL` exports a person's history per list with the chain's hashes; an
erasure leaves the chain verifying. On SQLite and PostgreSQL (the `pair` fixture)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import text

from crmsync.cli import cli
from crmsync.state import StateStore

from .conftest import Pair, write_config

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp", "CRMSYNC_PLUGINS": ""}


def run(pair: Any, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(pair.tmp / "crmsync.toml"), *args],
                              env=ENV)


def sql(pair: Any, statement: str, **params: Any) -> list[Any]:
    store = StateStore(pair.config.state_url())
    try:
        with store.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        store.close()


def synced(pair: Any) -> int:
    """Two runs (several journal entries); returns how many entries there are."""
    assert run(pair, "sync").exit_code == 0
    pair.esp_import()  # files mode: the ESP imports what crmsync uploaded
    pair.crm.add("eve@example.com", fields={"OptOut": "true", "FirstName": "Eve"})
    pair.esp_unsubscribe("ann@example.com")
    assert run(pair, "sync").exit_code in (0, 1)
    [(count,)] = sql(pair, "SELECT count(*) FROM crmsync_journal")
    assert count >= 5
    return int(count)


def test_each_run_seals_its_entries_and_verify_passes(pair) -> None:
    count = synced(pair)
    # sealed at the end of the run, not by verify
    [(sealed,)] = sql(pair, "SELECT count(*) FROM crmsync_journal_seals")
    assert sealed == count
    result = run(pair, "--json", "journal", "verify")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["entries"] == count and len(report["head"]) == 64
    assert run(pair, "journal", "verify").stdout.startswith(
        f"journal verified: {count} entries sealed")


def test_verify_names_an_edited_entry(pair) -> None:
    synced(pair)
    sql(pair, "UPDATE crmsync_journal SET new_status = CASE WHEN new_status = 'subscribed' "
              "THEN 'unsubscribed' ELSE 'subscribed' END WHERE id = 2")
    result = run(pair, "journal", "verify")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].startswith("journal NOT verified: 1 problem(s)")
    assert "entry 2 was edited after it was sealed" in result.stdout


def test_verify_names_a_deleted_entry_with_or_without_its_seal(pair) -> None:
    synced(pair)
    sql(pair, "DELETE FROM crmsync_journal WHERE id = 3")
    report = json.loads(run(pair, "--json", "journal", "verify").stdout)
    assert [(p["entry"], p["problem"]) for p in report["problems"]] == [(3, "deleted")]
    sql(pair, "DELETE FROM crmsync_journal_seals WHERE journal_id = 3")
    result = run(pair, "journal", "verify")
    assert result.exit_code == 1
    assert "the chain breaks before entry 4: an entry before it was deleted" in result.stdout


def test_verify_names_reordered_entries(pair) -> None:
    synced(pair)
    # entries 2 and 3 trade places (their ids swapped)
    sql(pair, "UPDATE crmsync_journal SET id = -2 WHERE id = 2")
    sql(pair, "UPDATE crmsync_journal SET id = 2 WHERE id = 3")
    sql(pair, "UPDATE crmsync_journal SET id = 3 WHERE id = -2")
    report = json.loads(run(pair, "--json", "journal", "verify").stdout)
    assert not report["ok"]
    assert [(p["entry"], p["problem"]) for p in report["problems"]] == [
        (2, "reordered"), (3, "reordered")]
    assert "entry 2 holds what was sealed as entry 3" in report["problems"][0]["detail"]


def test_verify_names_an_entry_inserted_among_sealed_ones(pair) -> None:
    synced(pair)
    sql(pair, "DELETE FROM crmsync_journal_seals WHERE journal_id = 4")
    sql(pair, "UPDATE crmsync_journal_seals SET prev_hash = (SELECT hash FROM "
              "crmsync_journal_seals WHERE journal_id = 3) WHERE journal_id = 5")
    report = json.loads(run(pair, "--json", "journal", "verify").stdout)
    problems = {(p["entry"], p["problem"]) for p in report["problems"]}
    assert (4, "inserted") in problems
    assert (5, "seal altered") in problems  # the seal cannot be re-made without the key


def test_proof_exports_the_history_per_list_with_the_chain(pair) -> None:
    synced(pair)
    result = run(pair, "proof", "ann@example.com")
    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    assert proof["chain"]["ok"] and proof["pseudonym"].startswith("hmac:")
    news = proof["lists"]["1"]
    assert [(e["old_status"], e["new_status"]) for e in news] == [
        (None, "subscribed"), ("subscribed", "unsubscribed")]
    assert [e["from"] for e in news] == ["crm:memory", "esp:memory-esp"]
    seals = {row[0]: (row[1], row[2]) for row in sql(
        pair, "SELECT journal_id, prev_hash, hash FROM crmsync_journal_seals")}
    for entry in news:
        assert (entry["prev_hash"], entry["hash"]) == seals[entry["entry"]]
    assert set(proof["lists"]) == {"1", "2"}  # her Events list too


def test_the_chain_still_verifies_after_an_erasure(pair) -> None:
    count = synced(pair)
    before = json.loads(run(pair, "--json", "journal", "verify").stdout)["head"]
    forgot = run(pair, "forget", "ann@example.com", "--yes")
    assert forgot.exit_code == 0, forgot.output
    assert not sql(pair, "SELECT id FROM crmsync_journal WHERE email = 'ann@example.com'")
    after = json.loads(run(pair, "--json", "journal", "verify").stdout)
    assert after["ok"] and after["entries"] == count and after["head"] == before
    proof = json.loads(run(pair, "proof", "ann@example.com").stdout)
    assert [e["address"] for e in proof["lists"]["1"]] == ["erased", "erased"]


def test_a_lost_key_is_a_clear_error(pair, tmp_path: Path) -> None:
    synced(pair)
    (tmp_path / ".crmsync.ledger-key").unlink()
    result = run(pair, "journal", "verify")
    assert result.exit_code == 2
    assert "no ledger key: set CRMSYNC_LEDGER_KEY or restore" in result.stderr


def test_forget_scrubs_the_failed_records_report_and_run_summaries(tmp_path: Path) -> None:
    path = write_config(tmp_path, crm_settings='fail_emails = ["ann@example.com"]')
    pair = Pair(tmp_path, path)
    pair.crm.add("ann@example.com", fields={"OptOut": "false"})
    pair.crm.add("bob@example.com", fields={"OptOut": "false"})
    assert run(pair, "sync").exit_code == 0
    pair.esp_import()
    pair.esp_unsubscribe("ann@example.com")
    failed = run(pair, "sync")  # her opt-out cannot be written to the CRM
    assert failed.exit_code == 1
    reports = sorted((tmp_path / "reports").glob("failed-*.csv"))
    rows = sum(r.read_text().count("ann@example.com") for r in reports)
    assert rows >= 1
    # a run that stopped on her: its summary's error names her
    sql(pair, "UPDATE crmsync_runs SET stats = :stats WHERE id = (SELECT max(id) FROM "
              "crmsync_runs)", stats=json.dumps({"stopped_reason": "ANN@example.com: 500"}))
    forgot = json.loads(run(pair, "--json", "forget", "ann@example.com", "--yes").stdout)
    assert forgot["report_rows_removed"] == rows
    assert forgot["state"]["run summaries scrubbed"] == 1
    for report in reports:
        assert "ann@example.com" not in report.read_text().lower()
        assert report.read_text().startswith("side,email,list,code,reason,where")
    [(stats,)] = sql(pair, "SELECT stats FROM crmsync_runs WHERE id = (SELECT max(id) FROM "
                           "crmsync_runs)")
    stats = json.loads(stats) if isinstance(stats, str) else stats
    assert stats["stopped_reason"] == f"{forgot['pseudonym']}: 500"
