"""Every recorded cassette is free of secrets (whoever recorded it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

CASSETTES = sorted((Path(__file__).parents[2] / "cassettes").rglob("*.yaml"))
SECRET_KEYS = re.compile(r"^(password|client_secret|access_token|refresh_token|sessionName|"
                         r"accessKey|session_id|assertion|client_assertion)$", re.IGNORECASE)
SECRET_HEADERS = {"authorization", "oauth-token", "cookie", "set-cookie"}
ALLOWED = {"<scrubbed>", "", "null", "None"}


def _walk(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
            if isinstance(key, str) and SECRET_KEYS.match(key) and isinstance(item, str):
                yield f"{path}.{key}", item
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")


def test_there_are_cassettes_for_every_vendor() -> None:
    vendors = {path.parent.name for path in CASSETTES}
    assert {"mailup", "salesforce", "sugarcrm", "vtiger"} <= vendors


@pytest.mark.parametrize("path", CASSETTES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_cassette_has_no_secret(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    for interaction in data["interactions"]:
        for side in ("request", "response"):
            headers = interaction[side].get("headers") or {}
            for name, values in headers.items():
                if name.lower() in SECRET_HEADERS:
                    assert all(v in ALLOWED or "<scrubbed>" in v for v in values), (path, name)
        body = interaction["request"].get("body") or ""
        for match in re.finditer(r"(?:^|[&?])(password|client_secret|accessKey|sessionName)="
                                 r"([^&]*)", str(body)):
            assert match.group(2) in ("%3Cscrubbed%3E", "<scrubbed>", ""), (path, match.group(1))
        import json

        for text in (body, (interaction["response"].get("body") or {}).get("string", "")):
            try:
                parsed = json.loads(text)
            except (TypeError, ValueError):
                continue
            for where, value in _walk(parsed):
                assert value in ALLOWED or "scrubbed" in value, (path, where)
