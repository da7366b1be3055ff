"""The package's public names and its registration, pinned."""

from __future__ import annotations

import crmsync_vtiger
from crmsync.registry import load, load_emulator
from crmsync_vtiger.emulator import VtigerEmulator


def test_public_api_is_pinned():
    assert crmsync_vtiger.__all__ == ["VtigerConnector", "VtigerSettings"]


def test_registered_under_its_entry_points():
    assert load("vtiger") is crmsync_vtiger.VtigerConnector
    assert load_emulator("vtiger") is VtigerEmulator
    assert crmsync_vtiger.VtigerConnector.Settings is crmsync_vtiger.VtigerSettings


def test_every_setting_is_described():
    for name, field in crmsync_vtiger.VtigerSettings.model_fields.items():
        assert field.description, f"setting {name} has no description (crmsync init shows it)"
