"""The batch end to end with every CRM connector: `crmsync demo --json` drives the CRM's
emulator, the MailUp emulator and a real FTP server, and reports what a user would see."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("crm", "options"), [
    ("memory", []), ("salesforce", []), ("sugarcrm", []),
    ("sugarcrm", ["--option", "flavour=v4_1"]),  # SugarCRM CE / SuiteCRM's legacy API
    ("vtiger", [])], ids=["memory", "salesforce", "sugarcrm", "sugarcrm-v4_1", "vtiger"])
def test_two_way_batch_sync(crm, options, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crmsync", "--json", "demo", "--connector", crm, "--contacts",
         "30", "--dir", str(tmp_path), *options], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    full, diff = report["full_sync"], report["diff_sync"]
    if options:
        config = (tmp_path / "crmsync.toml").read_text()
        assert 'flavour = "v4_1"' in config, config
    assert full["status"] == "succeeded" and full["full"] and full["crm_read"] >= 30
    assert diff["status"] == "succeeded" and not diff["full"] and diff["failed"] == 0
    rows = {row["email"]: row for row in report["contacts"]}
    assert len(rows) == 6
    for row in rows.values():
        if row["what happened"] == "unsubscribed at the ESP":
            assert row["crm_opted_out"], f"{row['email']}: the ESP unsubscribe did not reach {crm}"
            assert row["esp_list_1"] == "unsubscribed"
            assert any("1: subscribed → unsubscribed (esp:mailup)" in j for j in row["journal"])
        elif row["what happened"] == "opted out in the CRM":
            assert row["esp_list_1"] == "unsubscribed", "the CRM opt-out did not reach the ESP"
            assert any(f"(crm:{crm})" in j for j in row["journal"])
        else:
            assert row["esp_list_1"] == "subscribed" and not row["crm_opted_out"]
    # a renamed contact was re-sent, the untouched ones were not
    assert diff["skipped_unchanged"] >= full["crm_read"] - 10
    done = tmp_path / "space" / "in" / "done"
    uploads = sorted(p for p in done.glob("crmsync-import-*.csv") if "followups" not in p.name)
    assert len(uploads) == 2
    assert "Renamed" in uploads[-1].read_text(encoding="utf-8", errors="replace")
    # the demo's cascade (list 1 -> list 2) ran for unsubscribes from either side, and
    # reached the ESP in the same run (a CRM opt-out's in the follow-ups import file)
    followups = "".join(p.read_text(encoding="utf-8", errors="replace")
                        for p in done.glob("crmsync-import-*followups*.csv"))
    for email, row in rows.items():
        if row["what happened"] in ("unsubscribed at the ESP", "opted out in the CRM") \
                and row["esp_list_2"] is not None:
            assert row["esp_list_2"] == "unsubscribed", row
            if "2: subscribed → unsubscribed (post_operation)" in row["journal"] \
                    and row["what happened"] == "opted out in the CRM":
                assert email in followups
