"""Shared pieces of the MailUp tests: settings for an emulator, state look-ups."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from crmsync_mailup import MailUpSettings
from crmsync_mailup.emulator import CONSOLE, MailUpEmulator

PREFIX = CONSOLE  # request-count keys are "METHOD <PREFIX>/List/{id}/..."


def settings_for(emulator: MailUpEmulator, monkeypatch: pytest.MonkeyPatch,
                 **overrides: Any) -> MailUpSettings:
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    values = {**profile["settings"], "rate_per_s": None, "import_poll_s": 0.01, **overrides}
    return MailUpSettings.load("mailup", values)


def requests_of(control: httpx.Client) -> dict[str, int]:
    return dict(control.get("/requests").json())


def contact(emulator: MailUpEmulator, email: str) -> dict[str, Any] | None:
    for item in emulator.state()["contacts"]:
        if item["email"] == email and not item["deleted"]:
            return item
    return None
