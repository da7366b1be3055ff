"""Deeply nested JSON to a CRM push endpoint is a 400 and stores nothing, not a 500 from
a RecursionError (issue 12 point 8)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .conftest import CRM_SECRET
from .test_crm_connectors_e2e import _served

NESTED = [b"[" * 50_000, b'{"a":' * 50_000, b"[" * 50_000 + b"]" * 50_000]


@pytest.mark.parametrize("name,path", [("sugarcrm", "after_save"), ("vtiger", "")])
def test_deeply_nested_json_is_400(name: str, path: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with _served(name, tmp_path, monkeypatch, poll="never",
                 crm_secret=True) as (_crm_url, serve_url, _esp, _opt_out, state):
        for body in NESTED:
            answer = httpx.post(f"{serve_url}/hooks/crm/{CRM_SECRET}/{path}", content=body,
                                headers={"Content-Type": "application/json"}, timeout=30)
            assert answer.status_code == 400, (name, answer.status_code, answer.text[:200])
            assert CRM_SECRET not in answer.text
        assert state.inbox_counts() == {}
