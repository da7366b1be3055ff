"""Structured logs (issue 17 point 3): `[logging] format = "json"` in crmsync.toml, the
command line winning over it, and the run_id on records of threads a run starts."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.logs import RunLogContext, configure_logging, mask_emails
from crmsync.testing.memory import store

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp", "CRMSYNC_PLUGINS": ""}

CONFIG = """
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
[logging]
format = "json"
"""


def configure(tmp: Path) -> Path:
    store(path=tmp / "crm.json").add("ann@example.com", fields={"OptOut": "false"})
    path = tmp / "crmsync.toml"
    path.write_text(CONFIG.format(tmp=tmp))
    return path


def run(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", str(config), *args], env=ENV)


def test_the_config_key_turns_json_on_and_the_command_line_wins(tmp_path: Path) -> None:
    config = configure(tmp_path)
    result = run(config, "-v", "sync")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(r["logger"] == "crmsync.progress" and r["run_id"] for r in records)
    text = run(config, "-v", "--log-format", "text", "sync")
    assert text.exit_code == 0
    assert text.stderr.startswith("crmsync: sync diff:")  # plain lines, no JSON


def test_records_of_a_thread_the_run_starts_carry_its_run_id() -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    configure_logging(logging.INFO, "json")
    handler = Collect()
    root = logging.getLogger()
    handler.setFormatter(next(h for h in root.handlers if getattr(h, "_crmsync", False))
                         .formatter)
    root.addHandler(handler)
    try:
        context = RunLogContext()
        context.crmsync_run_started(run_id="r-1", mode="batch", full=False)
        worker = threading.Thread(target=lambda: logging.getLogger("a.library").warning(
            "to ann@example.com"))
        worker.start()
        worker.join()
        context.crmsync_run_finished(run_id="r-1", stats={})
        logging.getLogger("a.library").warning("after")
    finally:
        root.removeHandler(handler)
        configure_logging(logging.WARNING, "text")
    during, after = (json.loads(line) for line in lines)
    assert during["run_id"] == "r-1" and during["message"] == "to a***@example.com"
    assert after["run_id"] == ""


def test_masking_keeps_the_domain_and_the_first_character() -> None:
    assert mask_emails("ann@example.com, o'x <Bob.B+1@Ex.co.uk>") == \
        "a***@example.com, o'x <B***@Ex.co.uk>"
    assert mask_emails("?q=Email%3D%3D%27ann%40example.com%27") == \
        "?q=Email%3D%3D%27a***@example.com%27"

