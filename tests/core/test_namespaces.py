"""The curated public namespaces, and what importing them costs (issue 19).

``crmsync`` is for embedding, ``crmsync.testing`` for connector authors' tests (contract
suite, emulator harness). Importing either, loading a connector, ``crmsync --version``
and ``crmsync connectors`` import neither Starlette, uvicorn nor an emulator: those come
with ``crmsync serve``, ``crmsync emulate`` / ``demo`` and the harness when used.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import crmsync
import crmsync.testing

from .conftest import write_config

ROOT = Path(__file__).resolve().parents[2]

TESTING_API = [
    "ConnectorContract", "Emulator", "EmulatorServer", "Faults", "MemoryConnector",
    "MemoryEspConnector", "MemoryEspPair", "closing_factory", "connector_on", "eventually",
    "free_port", "ftp_server", "scrub_text", "serving", "serving_realtime", "sftp_server",
    "sync_once", "vcr_config", "write_profile_config",
]

HEAVY = ("starlette", "uvicorn", "crmsync.emulator", "crmsync_mailup.emulator",
         "crmsync_salesforce.emulator", "crmsync_sugarcrm.emulator", "crmsync_vtiger.emulator")


def test_testing_api_is_pinned() -> None:
    assert sorted(crmsync.testing.__all__) == sorted(TESTING_API)
    for name in crmsync.testing.__all__:
        assert getattr(crmsync.testing, name) is not None, name


def heavy_modules_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = code + textwrap.dedent(f"""
        import sys
        print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY[:2]!r}
                     or m.startswith({HEAVY[2:]!r})))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env={**os.environ, "CRMSYNC_CONNECTORS": ""})
    return list(ast.literal_eval(out.stdout.strip().splitlines()[-1]))


CLI = "from crmsync.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"


@pytest.mark.parametrize("code", [
    "import crmsync",
    "import crmsync, crmsync.testing, crmsync.testing.plugin",
    "import crmsync\ncrmsync.load('memory'); crmsync.load('mailup')",
    CLI.format(argv=["--version"]),
    CLI.format(argv=["connectors"]),
], ids=["import", "import-testing-and-plugin", "load", "--version", "connectors"])
def test_no_starlette_uvicorn_or_emulator_is_imported(code: str) -> None:
    assert heavy_modules_after(code) == []


def test_the_emulators_are_imported_when_asked_for() -> None:
    """The probe above can see them: asking for the harness does import it."""
    assert "uvicorn" in heavy_modules_after("import crmsync.testing\ncrmsync.testing.Emulator")


def test_the_pytest_plugin_costs_nothing_until_its_fixture_is_used(tmp_path: Path) -> None:
    """pytest loads the ``pytest11`` entry point wherever crmsync is installed: a test suite
    that does not use crmsync's fixtures imports none of the harness."""
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(f"""
        import sys

        def test_probe(request):
            assert request.config.pluginmanager.has_plugin("crmsync")
            heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY[:2]!r}
                           or m.startswith({HEAVY[2:]!r}))
            assert heavy == []
    """))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "-c", os.devnull, str(tmp_path / "test_probe.py")],
        capture_output=True, text=True, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"})
    assert result.returncode == 0, result.stdout + result.stderr


def library_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## As a library", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_the_readme_library_example_uses_only_public_names_and_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = library_example()
    imports = [node for node in ast.walk(ast.parse(code))
               if isinstance(node, ast.Import | ast.ImportFrom)]
    assert imports, "the example imports what it uses"
    for node in imports:
        assert isinstance(node, ast.ImportFrom) and node.module == "crmsync", ast.unparse(node)
        assert {alias.name for alias in node.names} <= set(crmsync.__all__), ast.unparse(node)

    from crmsync.testing.memory import store

    write_config(tmp_path)
    crm = store(path=tmp_path / "crm.json")
    crm.add("ann@example.com", fields={"FirstName": "Ann", "LastName": "Lee"})
    crm.save()
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert [int(n) for n in lines[0].split()] == [1, 1, 0, 0]
    assert re.fullmatch(r".+ 1 None -> subscribed", lines[1]), lines


def test_connectors_json_marks_emulators_and_doubles() -> None:
    from click.testing import CliRunner

    from crmsync.cli import cli

    result = CliRunner().invoke(cli, ["--json", "connectors"],
                                env={"CRMSYNC_CONNECTORS": "memory,memory-esp,mailup,vtiger"})
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert {name for name, row in rows.items() if row["test_double"]} == {"memory",
                                                                          "memory-esp"}
    assert rows["mailup"]["emulator"] and rows["vtiger"]["emulator"]
    assert not rows["memory"]["emulator"]


def fake_distribution(site: Path, name: str, requirement: str) -> None:
    """An installed distribution whose test double needs its ``emulators`` extra."""
    dist = site / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nProvides-Extra: emulators\n"
        f"Requires-Dist: {requirement}; extra == \"emulators\"\n")
    (dist / "entry_points.txt").write_text(
        f"[crmsync.connectors]\n{name} = crmsync.testing.memory:MemoryConnector [emulators]\n")


def test_a_test_double_is_registered_only_with_its_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A double whose extra is not installed is not listed, and loading it names the extra
    to install; once the extra's requirements are there, it is listed, marked."""
    from crmsync.errors import PluginError
    from crmsync.registry import available, load

    fake_distribution(tmp_path, "without-extra", "no-such-package-here>=1")
    fake_distribution(tmp_path, "with-extra", "click>=8")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = {info.name: info for info in available()}
    assert "without-extra" not in found
    assert found["with-extra"].test_double and found["with-extra"].error is None
    with pytest.raises(PluginError, match=r"the connector 'without-extra' is installed with "
                       r"the emulators extra: run pip install 'without-extra\[emulators\]'"):
        load("without-extra")
    assert load("with-extra").name == "memory"


def test_the_demo_without_its_extra_says_which_to_install() -> None:
    """Where no emulator is registered (a plain install: here, the allow-list), the demo
    says what to install instead of failing on a missing module."""
    from click.testing import CliRunner

    from crmsync.cli import cli

    result = CliRunner().invoke(cli, ["demo"], env={"CRMSYNC_CONNECTORS": "memory"})
    assert result.exit_code == 2, result.output
    assert result.output.startswith("crmsync: error: the demo needs an ESP connector")
    assert "pip install 'crmsync[demo]'" in result.output


def test_a_module_named_unlike_its_package_still_names_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain install lists Salesforce as broken for want of ``jwt`` (package ``pyjwt``):
    the message names the extra named after the connector, not "reinstall"."""
    from crmsync.registry import available

    (tmp_path / "crmsync_acme.py").write_text("import acme_jwt_module_not_here\n")
    dist = tmp_path / "crmsync_acme-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: crmsync-acme\nVersion: 1.0\nProvides-Extra: acme\n"
        "Requires-Dist: py-acme-jwt>=2; extra == \"acme\"\n")
    (dist / "entry_points.txt").write_text("[crmsync.connectors]\nacme = crmsync_acme:Acme\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = {info.name: info for info in available()}
    assert found["acme"].error is not None
    assert found["acme"].error.endswith(
        "needs the module 'acme_jwt_module_not_here', which is not installed: "
        "run pip install 'crmsync-acme[acme]'")


def test_the_emulator_fixture_fails_in_one_line_when_the_emulator_cannot_load(
        tmp_path: Path) -> None:
    """Without the emulators extra (here: an allow-list without it) a test asking for an
    emulator fails with the one line saying what to install, not a traceback."""
    (tmp_path / "test_uses_fixture.py").write_text(textwrap.dedent("""
        def test_uses_fixture(crmsync_emulator):
            crmsync_emulator("mailup")
    """))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "-c", os.devnull, str(tmp_path / "test_uses_fixture.py")],
        capture_output=True, text=True, cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},
             "CRMSYNC_CONNECTORS": "memory"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "'mailup' is not in CRMSYNC_CONNECTORS='memory'" in result.stdout
    assert "registry.py" not in result.stdout, result.stdout
