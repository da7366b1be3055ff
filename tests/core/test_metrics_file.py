"""A batch run's metrics (issue 17 point 4): the textfile parsed by prometheus_client's
own parser, a push received by a real HTTP server, and the example alert rules in
docs/alerts.yml naming only metrics crmsync writes."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from crmsync.cli import cli
from crmsync.server.metrics import Metrics
from crmsync.testing.memory import store

ROOT = Path(__file__).resolve().parents[2]
ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp", "CRMSYNC_PLUGINS": ""}

CONFIG = """
[state]
url = "sqlite:///state.db"
[crm]
connector = "memory"
[crm.settings]
path = "{tmp}/crm.json"
page_size = 2
{crm_extra}
[esp]
connector = "memory-esp"
[esp.settings]
path = "{tmp}/esp.json"
[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"
[metrics]
textfile = "metrics/crmsync.prom"
"""


def configure(tmp: Path, crm_extra: str = "") -> Path:
    crm = store(path=tmp / "crm.json")
    if not crm.records:
        for name in ("ann", "bob", "cyd"):
            crm.add(f"{name}@example.com", fields={"OptOut": "false"})
    path = tmp / "crmsync.toml"
    path.write_text(CONFIG.format(tmp=tmp, crm_extra=crm_extra))
    return path


def run(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=ENV)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_sync_writes_its_counters_and_state_as_a_textfile(tmp_path: Path) -> None:
    config = configure(tmp_path)
    started = time.time()
    assert run(config, "sync").exit_code == 0
    metrics = samples((tmp_path / "metrics" / "crmsync.prom").read_text())
    assert metrics[("crmsync_batch_records", (("what", "crm_read"),))] == 3
    assert metrics[("crmsync_batch_records", (("what", "esp_written"),))] == 3
    assert metrics[("crmsync_batch_records", (("what", "failed"),))] == 0
    assert metrics[("crmsync_batch_run_failed", ())] == 0
    assert metrics[("crmsync_batch_run_status", (("status", "succeeded"),))] == 1
    assert metrics[("crmsync_batch_run_status", (("status", "failed"),))] == 0
    success = metrics[("crmsync_batch_last_success_timestamp_seconds", ())]
    assert started - 1 <= success <= time.time() + 1
    assert metrics[("crmsync_dead_letters", ())] == 0
    assert metrics[("crmsync_inbox_queue_depth", ())] == 0

    # a failed run (the CRM's read came up short): failed, and the last success kept
    config = configure(tmp_path, crm_extra='lose_emails = ["bob@example.com"]')
    failed = run(config, "sync", "--full", "--metrics-file", str(tmp_path / "failed.prom"))
    assert failed.exit_code == 3, failed.output
    after = samples((tmp_path / "failed.prom").read_text())
    assert after[("crmsync_batch_run_failed", ())] == 1
    assert after[("crmsync_batch_run_status", (("status", "failed"),))] == 1
    assert abs(after[("crmsync_batch_last_success_timestamp_seconds", ())] - success) < 1.5


def test_a_dry_run_writes_no_metrics(tmp_path: Path) -> None:
    config = configure(tmp_path)
    assert run(config, "sync", "--dry-run").exit_code == 0
    assert not (tmp_path / "metrics").exists()


class _Gateway(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append(("PUT", self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_sync_pushes_its_metrics_to_a_pushgateway(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = configure(tmp_path)
        url = f"http://127.0.0.1:{server.server_port}"
        assert run(config, "sync", "--pushgateway", url).exit_code == 0
    finally:
        server.shutdown()
    [(method, path, body)] = _Gateway.received
    assert (method, path) == ("PUT", "/metrics/job/crmsync")
    pushed = samples(body.decode())
    assert pushed[("crmsync_batch_records", (("what", "crm_read"),))] == 3
    bad = run(config, "sync", "--pushgateway", "pushgateway:9091")
    assert bad.exit_code == 2 and "expected an http(s) URL" in bad.stderr


def _written_names(tmp_path: Path) -> set[str]:
    config = configure(tmp_path)
    assert run(config, "sync").exit_code == 0
    text = (tmp_path / "metrics" / "crmsync.prom").read_text()
    names = {family.name for family in text_string_to_metric_families(text)}
    # the budget gauges are written (empty) even when no connector reports a budget
    names |= set(re.findall(r"^# TYPE (\w+)", text, re.MULTILINE))
    served = Metrics().render().decode()
    names |= {family.name for family in text_string_to_metric_families(served)}
    return names


def test_the_example_alert_rules_parse_and_name_real_metrics(tmp_path: Path) -> None:
    rules = yaml.safe_load((ROOT / "docs" / "alerts.yml").read_text())
    [group] = rules["groups"]
    by_name = {rule["alert"]: rule for rule in group["rules"]}
    assert set(by_name) == {"CrmsyncRunFailed", "CrmsyncNoSuccessfulRun",
                            "CrmsyncDeadLettersGrowing", "CrmsyncApiBudgetHigh"}
    assert "26 * 3600" in by_name["CrmsyncNoSuccessfulRun"]["expr"]
    assert "0.8" in by_name["CrmsyncApiBudgetHigh"]["expr"]
    known = _written_names(tmp_path)
    for rule in group["rules"]:
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        named = set(re.findall(r"\bcrmsync_\w+", rule["expr"]))
        assert named, rule["alert"]
        assert named <= known, (rule["alert"], named - known)
