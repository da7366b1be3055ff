"""The secrets file: parsed once by python-dotenv, handed to whoever needs a secret,
never written into the process environment; the environment wins over it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomli_w

from crmsync.config import load_config
from crmsync.emulator import EmulatorServer
from crmsync.runtime import build_hooks, open_files, open_side
from crmsync.testing.servers import ftp_server
from crmsync_mailup.emulator import MailUpEmulator


def _write(tmp_path: Path, config: dict, secrets: str) -> Path:
    (tmp_path / ".crmsync.secrets").write_text(secrets, encoding="utf-8")
    path = tmp_path / "crmsync.toml"
    path.write_text(tomli_w.dumps({"secrets_file": ".crmsync.secrets", **config}),
                    encoding="utf-8")
    return path


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("CRMSYNC_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_export_and_quoted_values_log_in_to_mailup_and_leave_the_environment_alone(
        tmp_path, clean_env):
    emulator = MailUpEmulator(rate_limit=0)
    with EmulatorServer(emulator) as _server:
        profile = emulator.demo_profile()
        secrets = profile["secrets"]
        path = _write(tmp_path, {"esp": {"connector": "mailup",
                                         "settings": profile["settings"]}},
                      "# MailUp, written by hand\n"
                      f'export CRMSYNC_MAILUP_PASSWORD="{secrets["CRMSYNC_MAILUP_PASSWORD"]}"\n'
                      f"CRMSYNC_MAILUP_CLIENT_SECRET={secrets['CRMSYNC_MAILUP_CLIENT_SECRET']}"
                      "  # from the console's developer page\n"
                      + "".join(f"{key}='{value}'\n" for key, value in secrets.items()
                                if key not in ("CRMSYNC_MAILUP_PASSWORD",
                                               "CRMSYNC_MAILUP_CLIENT_SECRET")))
        before = dict(os.environ)
        config = load_config(path)
        with open_side(config, "esp") as esp:
            health = esp.check()
        assert health.ok, health.detail  # the emulator accepted the password grant
        assert dict(os.environ) == before


def test_export_of_the_files_password_is_what_the_ftp_server_receives(tmp_path, clean_env):
    root = tmp_path / "ftp"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.csv").write_text("email\n")
    with ftp_server(root, password="s3 cret#1") as port:
        path = _write(tmp_path, {"files": {"url": f"ftp://crm@127.0.0.1:{port}/"}},
                      "export CRMSYNC_FILES_PASSWORD='s3 cret#1'  # the FTP account\n")
        before = dict(os.environ)
        config = load_config(path)
        assert open_files(config).list("in") == ["a.csv"]
        assert dict(os.environ) == before


def test_the_environment_wins_over_the_secrets_file(tmp_path, clean_env):
    root = tmp_path / "ftp"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.csv").write_text("email\n")
    clean_env.setenv("CRMSYNC_FILES_PASSWORD", "s3cret")
    with ftp_server(root, password="s3cret") as port:
        path = _write(tmp_path, {"files": {"url": f"ftp://crm@127.0.0.1:{port}/"}},
                      "CRMSYNC_FILES_PASSWORD=stale-one\n")
        assert open_files(load_config(path)).list("in") == ["a.csv"]


def test_a_comment_after_a_value_is_not_part_of_the_signing_key(tmp_path, clean_env):
    path = _write(tmp_path, {"post_operations": [{
        "on": "unsubscribe", "call_url": "http://127.0.0.1:9/hook",
        "secret_env": "CRMSYNC_HOOK_KEY"}]},
        "CRMSYNC_HOOK_KEY=abc # rotated in June\n")
    config = load_config(path)
    build_hooks(config)  # finds the key (it is checked at start-up)
    secret = config.post_operations[0].secret(config.secrets())
    assert secret is not None and secret.get_secret_value() == "abc"
    assert "CRMSYNC_HOOK_KEY" not in os.environ


def test_the_secrets_file_crmsync_writes_reads_back_the_same_values(tmp_path):
    from crmsync.secrets import read_secrets_file
    from crmsync.template import secrets_text

    values = {"PLAIN": "abc", "SPACED": "a b # not a comment", "PEM": "-----BEGIN-----\nk\n",
              "QUOTES": "it's \"q\" \\ x", "ACCENT": "é#1"}
    (tmp_path / "s").write_text(secrets_text(values), encoding="utf-8")
    assert read_secrets_file(tmp_path / "s") == values
