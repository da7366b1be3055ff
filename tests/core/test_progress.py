"""Progress on long work (issue 17 point 5): a full sync shows a bar with the CRM's count
as total and an ETA on a terminal (a real pseudo-terminal here), plain lines with the
total when not on a terminal, log records with --log-format json, nothing with --json."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.testing.memory import store

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp", "CRMSYNC_PLUGINS": ""}
PEOPLE = 40

CONFIG = """
[state]
url = "sqlite:///state.db"
[crm]
connector = "memory"
[crm.settings]
path = "{tmp}/crm.json"
page_size = 7
[esp]
connector = "memory-esp"
[esp.settings]
path = "{tmp}/esp.json"
[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"
"""


def configure(tmp: Path) -> Path:
    crm = store(path=tmp / "crm.json")
    for number in range(PEOPLE):
        crm.add(f"person{number}@example.com", fields={"OptOut": "false"})
    path = tmp / "crmsync.toml"
    path.write_text(CONFIG.format(tmp=tmp))
    return path


def run(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=ENV)


def test_on_a_terminal_a_full_sync_shows_a_bar_with_the_crm_count_and_an_eta(
        tmp_path: Path) -> None:
    config = configure(tmp_path)
    crmsync = shutil.which("crmsync", path=str(Path(sys.executable).parent))
    assert crmsync
    leader, follower = pty.openpty()
    env = {**os.environ, **ENV, "TERM": "xterm-256color", "COLUMNS": "160"}
    process = subprocess.Popen([crmsync, "--config", str(config), "sync", "--full"],
                               stdout=subprocess.DEVNULL, stderr=follower, env=env)
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        seen += chunk
    assert process.wait(60) == 0
    os.close(leader)
    screen = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen).decode(errors="replace")
    assert "crm read" in screen
    assert f"{PEOPLE}/{PEOPLE}" in screen  # the CRM's own count is the total
    assert "ETA" in screen and "0:00:00" in screen
    assert "crmsync: crm read" not in screen  # a bar, not the plain lines


def test_not_on_a_terminal_lines_carry_the_total(tmp_path: Path) -> None:
    config = configure(tmp_path)
    result = run(config, "sync", "--full")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("crmsync: sync full: memory-esp unsubscriptions")
    [read] = [line for line in lines if line.startswith("crmsync: crm read:")]
    assert re.match(rf"crmsync: crm read: 7 of {PEOPLE} \(18%\) \(\d+s\)$", read), read
    # a diff run has no total (the CRM counts only for a full read)
    store(path=tmp_path / "crm.json").add("late@example.com", fields={"OptOut": "false"})
    diff = run(config, "sync")
    assert any(re.match(r"crmsync: crm read: \d+ \(\d+s\)$", line)
               for line in diff.stderr.splitlines()), diff.stderr


def test_with_json_logs_progress_is_log_records_and_with_json_nothing(tmp_path: Path) -> None:
    config = configure(tmp_path)
    logged = run(config, "--log-format", "json", "sync", "--full")
    assert logged.exit_code == 0, logged.output
    records = [json.loads(line) for line in logged.stderr.splitlines()]
    progress = [r for r in records if r["logger"] == "crmsync.progress"]
    assert progress[0]["message"].startswith("sync full:")
    assert any(r["message"] == f"crm read: 7 of {PEOPLE} (18%)" and r["run_id"]
               for r in progress), progress
    quiet = run(config, "--json", "sync", "--full")
    assert quiet.exit_code == 0 and quiet.stderr == ""
