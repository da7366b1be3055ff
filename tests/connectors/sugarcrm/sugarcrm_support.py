"""Helpers shared by the Sugar tests: the emulator's control API."""

from __future__ import annotations

from typing import Any

import httpx

from crmsync.emulator import EmulatorServer

FLAVOURS = ("rest", "v4_1")


def control(server: EmulatorServer, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the emulator's control API."""
    url = f"{server.url}/_emulator/{path}"
    response = httpx.post(url, json=body or {}) if body is not None else httpx.get(url)
    response.raise_for_status()
    return response.json()


def state(server: EmulatorServer) -> dict[str, dict[str, Any]]:
    """Contacts in the emulator keyed by email (live ones first)."""
    found: dict[str, dict[str, Any]] = {}
    for item in control(server, "state")["contacts"]:
        if item["email"] and (item["email"] not in found or not item["deleted"]):
            found[item["email"]] = item
    return found


def requests_made(server: EmulatorServer) -> dict[str, int]:
    return dict(control(server, "requests"))


def calls(server: EmulatorServer) -> int:
    return sum(requests_made(server).values())


def reset_requests(server: EmulatorServer) -> None:
    httpx.delete(f"{server.url}/_emulator/requests").raise_for_status()
