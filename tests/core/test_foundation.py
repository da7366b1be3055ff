"""Plugin loading, the public API, hooks, configuration errors and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import crmsync
from crmsync.cli import cli
from crmsync.config import load_config
from crmsync.errors import ConfigError, PluginError
from crmsync.hooks import Hooks, HookSpecs, build_plugin_manager, hookimpl
from crmsync.registry import available, load

PUBLIC_API = [
    "AuthError", "Capabilities", "Change", "Config", "ConfigError", "Connector",
    "ConnectorSettings", "Contact", "CrmsyncError", "Cursor", "DataError", "EventRejected",
    "FileExchange", "Group", "Health", "InboundRequest", "MailingList", "MessageSender",
    "MultiListSubscriber", "Op", "Page", "PluginError", "QuotaExhausted", "RateLimited",
    "RemoteError", "SendResult", "StateError", "Status", "Subscription", "TransportError",
    "WriteResult", "__version__", "build_batch", "build_connector", "load", "load_config",
    "normalize_email", "open_side", "open_store",
]


def test_public_api_is_pinned() -> None:
    assert sorted(crmsync.__all__) == sorted(PUBLIC_API)
    for name in crmsync.__all__:
        assert hasattr(crmsync, name)


def test_every_hook_and_contract_method_is_documented() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    for name in dir(HookSpecs):
        if name.startswith("crmsync_"):
            assert getattr(HookSpecs, name).__doc__, f"hookspec {name} has no docstring"
            assert f"`{name}(" in docs, f"hook {name} missing from docs/plugins.md"
    for method in ("check", "lists", "read", "write", "decode_event", "event_ack"):
        assert f"`{method}" in docs, f"contract method {method} missing from docs/plugins.md"


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    """A half-installed third-party plugin: its entry point imports a missing module."""
    site = tmp_path / "site"
    (site / "crmsync_broken").mkdir(parents=True)
    (site / "crmsync_broken" / "__init__.py").write_text("import not_installed_dependency\n")
    dist = site / "crmsync_broken-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: crmsync-broken\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(
        "[crmsync.connectors]\nbroken = crmsync_broken:Connector\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_broken_plugin_is_named_and_others_still_load(broken_plugin) -> None:
    found = {info.name: info for info in available()}
    assert found["broken"].error is not None
    assert "crmsync-broken 1.2.3" in found["broken"].error
    assert "not_installed_dependency" in found["broken"].error
    assert found["memory"].error is None and found["memory"].plugin is not None
    with pytest.raises(PluginError, match="crmsync-broken"):
        load("broken")
    assert load("memory").name == "memory"


def test_missing_connector_lists_installed_ones() -> None:
    with pytest.raises(PluginError, match="no connector named 'nope'.*memory"):
        load("nope")


def test_allow_list_restricts_loading(monkeypatch) -> None:
    monkeypatch.setenv("CRMSYNC_CONNECTORS", "memory")
    assert [info.name for info in available()] == ["memory"]
    with pytest.raises(PluginError, match="CRMSYNC_CONNECTORS"):
        load("memory-esp")


def test_connectors_json_lists_builtin_and_example(broken_plugin) -> None:
    result = CliRunner().invoke(cli, ["--json", "connectors"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["memory"]["kind"] == "crm"
    assert "incremental_read" in rows["memory"]["capabilities"]
    assert rows["memory-esp"]["kind"] == "esp"
    assert "file_exchange" in rows["memory-esp"]["capabilities"]
    assert rows["example-csv"]["distribution"] == "crmsync-example-connector"
    assert rows["broken"]["error"]


def test_hooks_chain_and_misspelled_hook_fails() -> None:
    class Upper:
        @hookimpl
        def crmsync_transform_contact(self, contact, direction):
            return contact.model_copy(update={"fields": {"Name": "X"}})

    hooks = Hooks(build_plugin_manager([Upper()], load_entry_points=False))
    contact = crmsync.Contact(email="a@example.com")
    assert hooks.transform_contact(contact, "crm_to_esp").fields == {"Name": "X"}

    class Typo:
        @hookimpl
        def crmsync_post_operatoin(self, change, context):
            return []

    with pytest.raises(PluginError, match="unknown hook"):
        build_plugin_manager([Typo()], load_entry_points=False)


def test_config_errors_name_the_key(tmp_path) -> None:
    path = tmp_path / "crmsync.toml"
    path.write_text(textwrap.dedent("""
        [[lists]]
        name = "A"
        esp_list = 1
        members = "campain:7"
        [consent]
        resubscribe = "sometimes"
    """))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "lists.0.members" in text and "campaign:<id>" in text
    assert "consent.resubscribe" in text


def test_secret_inline_is_refused(monkeypatch) -> None:
    from pydantic import SecretStr

    from crmsync.contract import ConnectorSettings

    class S(ConnectorSettings):
        user: str
        password: SecretStr

    with pytest.raises(ConfigError, match="CRMSYNC_X_PASSWORD"):
        S.load("x", {"user": "u", "password": "p"})
    monkeypatch.setenv("CRMSYNC_X_PASSWORD", "from-env")
    settings = S.load("x", {"user": "u"})
    assert settings.password.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)


def test_cli_exit_codes_and_init(tmp_path) -> None:
    runner = CliRunner()
    config = tmp_path / "crmsync.toml"
    result = runner.invoke(cli, ["--config", str(config), "sync"])
    assert result.exit_code == 2 and "crmsync init" in result.output
    result = runner.invoke(cli, ["--config", str(config), "init", "--connector", "memory",
                                 "--esp", "memory-esp"])
    assert result.exit_code == 0, result.output
    text = config.read_text()
    assert 'connector = "memory"' in text and "[[lists]]" in text
    load_config(config)  # the template is valid as written
    result = runner.invoke(cli, ["--config", str(config), "init", "--connector", "memory"])
    assert result.exit_code == 2 and "--force" in result.output


def test_connector_alone_runs_sync(tmp_path) -> None:
    from .conftest import write_config

    path = write_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "crmsync", "--connector", "memory", "--config",
                             str(path), "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    for key in ("mode", "full", "crm_read", "esp_written", "esp_unsubscribes_read",
                "crm_written", "failed", "duration_s"):
        assert key in stats


@pytest.mark.parametrize(("args", "message"), [
    (["emulate", "sugarcrm", "-o", "bogus=1"], "--option for the sugarcrm emulator"),
    (["emulate", "sugarcrm", "-o", "flavour=v5"], "flavour must be rest or v4_1"),
    (["emulate", "sugarcrm", "-o", "novalue"], "expected KEY=VALUE"),
    (["demo", "-c", "sugarcrm", "-o", "contacts=3"], "use --contacts instead"),
    (["demo", "-c", "memory", "-o", "flavour=v4_1"], "`memory` has none")])
def test_a_bad_emulator_option_is_a_usage_error(args, message) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
