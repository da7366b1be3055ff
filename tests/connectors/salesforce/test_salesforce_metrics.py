"""The API budget gauge of a batch run's metrics (issue 17 point 4): Salesforce's daily
budget as its `Sforce-Limit-Info` header said, in the textfile, parsed by
prometheus_client's parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crmsync.config import load_config
from crmsync.testing.pairs import sync_once, write_profile_config
from crmsync_salesforce.emulator import SalesforceEmulator


def test_a_batch_run_writes_the_salesforce_api_budget(
        tmp_path: Path, emulator: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    with emulator.lock:
        emulator.seed(5, 0)
        emulator.daily_limit = 1000
        emulator.used = 850  # the org has used 85 % of its day: above the 80 % alert
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    path = write_profile_config(
        tmp_path / "crmsync.toml", crm="salesforce", profile=profile,
        crm_settings={"quota_share": 1.0},
        esp={"connector": "memory-esp", "mode": "api",
             "settings": {"path": str(tmp_path / "esp.json")}})
    path.write_text(path.read_text() + '\n[metrics]\ntextfile = "crmsync.prom"\n')
    stats = sync_once(load_config(path))
    assert stats.status == "succeeded", stats.stopped_reason
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(
                   (tmp_path / "crmsync.prom").read_text()) for s in family.samples}
    label = (("connector", "salesforce"),)
    used = samples[("crmsync_api_budget_used", label)]
    assert samples[("crmsync_api_budget_limit", label)] == 1000
    assert 850 < used == emulator.used  # every call of the run counted, as the org counts
    assert samples[("crmsync_api_budget_used_ratio", label)] == pytest.approx(used / 1000)
    assert not any(name.startswith("crmsync_api_budget") and dict(labels).get("connector")
                   == "memory-esp" for name, labels in samples)  # it reports no budget
