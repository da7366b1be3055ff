"""What the commands print (issue 12 points 13 and 15): progress on long work, full run
ids, real-time runs named as such, servers killed mid-run not left "running", readable
inbox and demo output, a dry run that writes nothing, test doubles marked, a busy port
refused before any banner, a missing SFTP module named."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.testing.memory import store

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp,mailup,salesforce,sugarcrm,vtiger"}

PAIR = """
[state]
url = "sqlite:///state.db"
[crm]
connector = "memory"
[crm.settings]
path = "{tmp}/crm.json"
[esp]
connector = "memory-esp"
[esp.settings]
path = "{tmp}/esp.json"
[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"
[server]
listen = "127.0.0.1:{port}"
poll = "never"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pair(tmp: Path, port: int = 0) -> Path:
    crm = store(path=tmp / "crm.json")
    if not crm.records:
        crm.add("ann@example.com", fields={"OptOut": "false"})
        crm.add("bob@example.com", fields={"OptOut": "false"})
    path = tmp / "crmsync.toml"
    path.write_text(PAIR.format(tmp=tmp, port=port or free_port()))
    return path


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), env=ENV)


def test_sync_says_what_it_does_on_stderr_and_nothing_extra_with_json(tmp_path: Path) -> None:
    config = str(pair(tmp_path))
    plain = run("--config", config, "sync")
    assert plain.exit_code == 0, plain.output
    lines = plain.stderr.splitlines()
    assert lines[0].startswith("crmsync: sync diff: memory-esp unsubscriptions, then memory "
                               "changes to memory-esp")
    assert any(line.startswith("crmsync: crm read: 2") for line in lines), lines
    assert lines[-1].startswith("crmsync: succeeded: 2 read, 2 to the ESP")
    quiet = run("--config", config, "--json", "sync", "--full")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    json.loads(quiet.stdout)


def test_a_dry_run_writes_nothing_not_even_the_state_file(tmp_path: Path) -> None:
    config = str(pair(tmp_path))
    dry = run("--config", config, "--json", "sync", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["dry_run"] is True
    assert not (tmp_path / "state.db").exists()
    assert run("--config", config, "sync").exit_code == 0
    before = (tmp_path / "state.db").read_bytes()
    assert run("--config", config, "sync", "--dry-run").exit_code == 0
    assert (tmp_path / "state.db").read_bytes() == before
    runs = json.loads(run("--config", config, "--json", "status").stdout)["runs"]
    assert [r["dry_run"] for r in runs] == [False]


def test_a_dry_run_in_a_fresh_folder_leaves_no_file_and_prints_each_contacts_plan(
        tmp_path: Path) -> None:
    """Files mode (a local file space, a spool folder, a report folder): the dry run
    creates none of them, and ``-v`` prints what would happen to each contact."""
    config = pair(tmp_path)
    config.write_text(config.read_text().replace(
        "[esp.settings]", 'mode = "files"\n[esp.settings]') + f"""
[files]
url = "file://{tmp_path / 'space'}"
""")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    dry = run("--config", str(config), "sync", "--dry-run", "-v")
    assert dry.exit_code == 0, dry.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    plan = [line.split() for line in dry.stdout.splitlines() if line.startswith("plan:")]
    assert sorted(plan) == [["plan:", "esp", "ann@example.com", "1:", "subscribed", "(new)"],
                            ["plan:", "esp", "bob@example.com", "1:", "subscribed", "(new)"]]
    quiet = run("--config", str(config), "sync", "--dry-run")
    assert not [line for line in quiet.stdout.splitlines() if line.startswith("plan:")]


def test_status_shows_whole_run_ids_and_readable_counts(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    config = str(pair(tmp_path))
    assert run("--config", config, "sync").exit_code == 0
    [only] = json.loads(run("--config", config, "--json", "status").stdout)["runs"]
    shown = run("--config", config, "status").stdout
    assert only["id"] in shown
    assert "{" not in shown and "None" not in shown
    assert "inbox: empty; dead letters: 0" in shown
    assert "pending writes: none" in shown


def test_a_killed_server_is_not_left_running(tmp_path: Path) -> None:
    port = free_port()
    config = str(pair(tmp_path, port))
    env = {**os.environ, **ENV, "CRMSYNC_HOOK_SECRET_CRM": "s3cret-crm"}
    server = subprocess.Popen([sys.executable, "-m", "crmsync", "--config", config, "serve"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            runs = json.loads(run("--config", config, "--json", "status").stdout or "{}"
                              ).get("runs", []) if (tmp_path / "state.db").exists() else []
            if runs:
                break
            assert time.monotonic() < deadline, server.stderr.read1(4000)  # type: ignore
            time.sleep(0.2)
        [live] = runs
        assert live["mode"] == "realtime" and live["status"] == "running"
        assert "real-time" in run("--config", config, "status").stdout
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        [dead] = json.loads(run("--config", config, "--json", "status").stdout)["runs"]
        assert dead["status"] == "died", dead
        assert "died: its process ended" in run("--config", config, "status").stdout
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)


def test_serve_on_a_busy_port_fails_before_any_banner(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = str(pair(tmp_path, port))
        result = CliRunner().invoke(cli, ["--config", config, "serve"],
                                    env={**ENV, "CRMSYNC_HOOK_SECRET_CRM": "s3cret-crm"})
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"crmsync: error: cannot listen on 127.0.0.1:{port}")
    assert "crmsync serve: http" not in result.output


def test_connectors_marks_the_test_doubles() -> None:
    result = run("connectors")
    table = result.stdout
    assert "memory (test double)" in table and "memory-esp (test double)" in table
    assert "mailup (test double)" not in table
    rows = {row["name"]: row for row in json.loads(run("--json", "connectors").stdout)}
    assert rows["memory"]["test_double"] and not rows["mailup"]["test_double"]


def test_a_missing_sftp_module_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from crmsync.errors import TransportError
    from crmsync.files.space import FileSpace

    registry = importlib.import_module("fsspec.registry")  # the module, not fsspec.registry
    # as if paramiko had never been installed, even when fsspec loaded its SFTP class
    monkeypatch.setitem(sys.modules, "paramiko", None)
    monkeypatch.setitem(sys.modules, "fsspec.implementations.sftp", None)
    monkeypatch.delitem(registry._registry, "sftp", raising=False)
    monkeypatch.delitem(sys.modules, "crmsync.files.sftp", raising=False)  # imported anew
    with pytest.raises(TransportError) as missing:  # the file space connects on first use
        FileSpace("sftp://u@127.0.0.1:1/x", username="u", timeout=1).list("x")
    assert "None" not in str(missing.value)
    assert "paramiko" in str(missing.value) and "crmsync[sftp]" in str(missing.value)


def test_the_demo_prints_words_and_whole_addresses(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = run("demo", "--connector", "memory", "--dir", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "{'" not in text and "None" not in text
    final = text.split("4. where the touched contacts stand now")[1]
    emails = [line.split()[1] for line in final.splitlines()
              if "@example.com" in line and line.startswith("│")]
    assert emails and all(email.endswith("@example.com") for email in emails), final
