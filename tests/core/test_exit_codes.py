"""The README's exit-code table, enforced: every case below runs the real command and
must exit with the code whose README row names it (issue 12 point 14)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.testing.memory import store

README = Path(__file__).resolve().parents[2] / "README.md"
ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp,mailup"}

PAIR = """
[state]
url = "{state}"
[crm]
connector = "memory"
[crm.settings]
path = "{tmp}/crm.json"
{esp}
[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"
"""
MEMORY_ESP = """[esp]
connector = "memory-esp"
[esp.settings]
path = "{tmp}/esp.json"
fail_emails = {fail}
"""


def readme_rows() -> dict[int, str]:
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| (\d) \| (.*) \|$", line)
        if match:
            rows[int(match.group(1))] = match.group(2)
    return rows


@pytest.fixture
def setup(tmp_path: Path) -> Callable[..., Path]:
    def write(*, state: str = "sqlite:///state.db", fail: tuple[str, ...] = (),
              esp: str | None = None) -> Path:
        crm = store(path=tmp_path / "crm.json")
        if not crm.records:
            crm.add("ann@example.com", fields={"OptOut": "false"})
            crm.add("bob@example.com", fields={"OptOut": "false"})
        esp_table = esp or MEMORY_ESP.format(tmp=tmp_path, fail=list(fail))
        path = tmp_path / "crmsync.toml"
        path.write_text(PAIR.format(tmp=tmp_path, state=state, esp=esp_table))
        return path
    return write


@pytest.fixture
def mailup_wrong_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    from crmsync.emulator import EmulatorServer
    from crmsync_mailup.emulator import MailUpEmulator

    with EmulatorServer(MailUpEmulator()) as server:
        profile = server.emulator.demo_profile()
        for key, value in profile["secrets"].items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("CRMSYNC_MAILUP_PASSWORD", "wrong-password")
        settings = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in
                             profile["settings"].items() if isinstance(v, str))
        yield f'[esp]\nconnector = "mailup"\n[esp.settings]\n{settings}\n'


# (the README row's words, the code, the command, how to set it up)
CASES: list[tuple[str, int, list[str], dict[str, Any]]] = [
    ("every record was written", 0, ["sync"], {}),
    ("the ESP refused a record", 1, ["sync"], {"fail": ("bob@example.com",)}),
    ("an unknown option", 2, ["sync", "--no-such-option"], {}),
    ("an invalid address", 2, ["subscribe", "not-an-email", "--list", "1"], {}),
    ("a list not in `[[lists]]`", 2, ["subscribe", "ann@example.com", "--list", "9"], {}),
    ("a `[state] url` crmsync cannot use", 2, ["status"], {"state": "foo://bar"}),
    ("`check` when a side refuses the credentials", 2, ["check"], {"mailup": True}),
    ("`crmsync.toml` missing", 2, ["--config", "nowhere.toml", "status"], {"none": True}),
    ("the state store does not answer", 3, ["status"],
     {"state": "postgresql+psycopg://crmsync:pw@127.0.0.1:1/crmsync"}),
]


@pytest.mark.parametrize("words,code,argv,how", CASES, ids=[c[0] for c in CASES])
def test_each_exit_code_is_the_readme_s(words: str, code: int, argv: list[str],
                                         how: dict[str, Any], setup: Callable[..., Path],
                                         request: pytest.FixtureRequest) -> None:
    rows = readme_rows()
    assert sorted(rows) == [0, 1, 2, 3], "the README's exit-code table"
    assert words in rows[code], f"README row {code} should name: {words}"
    esp = request.getfixturevalue("mailup_wrong_password") if how.get("mailup") else None
    path = setup(state=how.get("state", "sqlite:///state.db"), fail=how.get("fail", ()),
                 esp=esp)
    args = argv if how.get("none") else ["--config", str(path), *argv]
    result = CliRunner().invoke(cli, args, env=ENV)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code >= 2 and argv[-1] != "--no-such-option" and argv != ["check"]:
        assert result.output.startswith("crmsync: error: "), result.output


def test_json_and_verbose_go_after_the_command_too(setup: Callable[..., Path]) -> None:
    """Issue 12 point 11: the README's `sync --full --json` works as written."""
    import json

    path = setup()
    result = CliRunner().invoke(cli, ["--config", str(path), "sync", "--full", "--json",
                                      "-v"], env=ENV)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["crm_read"] == 2


def test_version_imports_no_heavy_library() -> None:
    """Every cron run pays the start-up: `crmsync --version` (and `import crmsync`)
    import neither httpx, SQLAlchemy, pydantic nor rich (benchmarks/batch.py measures
    the time; this pins the cause)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom crmsync.cli import main\ntry:\n    main(['--version'])\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in ('httpx', 'sqlalchemy', 'pydantic', 'rich', "
             "'crmsync.engine', 'crmsync.commands.sync') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    assert out[0].startswith("crmsync, version") and out[-1] == "[]", out


def test_every_command_module_is_named_for_lazy_loading() -> None:
    import importlib
    import pkgutil

    import crmsync.commands
    from crmsync.cli import LAZY_COMMANDS, cli

    before = set(cli.commands)
    for module in pkgutil.iter_modules(crmsync.commands.__path__):
        importlib.import_module(f"crmsync.commands.{module.name}")
    for name, command in cli.commands.items():
        if name not in before or name in LAZY_COMMANDS:
            assert LAZY_COMMANDS.get(name) == command.callback.__module__.rsplit(".", 1)[-1], \
                name
