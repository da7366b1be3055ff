"""The real-time public API is pinned, and the guide documents every setting, metric,
endpoint and command."""

from __future__ import annotations

import re
from pathlib import Path

import crmsync.actions
import crmsync.engine.realtime
import crmsync.server
from crmsync.cli import cli
from crmsync.config import ServerConfig
from crmsync.server import Metrics

GUIDE = (Path(__file__).parents[2] / "docs" / "realtime.md").read_text()


def test_public_api_is_pinned() -> None:
    assert sorted(crmsync.server.__all__) == [
        "CsrfTokens", "Endpoint", "EndpointKeys", "Inbox", "IpGuard", "Metrics", "NullInbox",
        "RealtimeService", "ServerThread", "StoreInbox", "build_app", "dedupe_key",
        "parse_listen", "serve", "signature_ok"]
    assert sorted(crmsync.engine.realtime.__all__) == [
        "ENDPOINTS", "NullObserver", "RealtimeWorker", "WorkerObserver", "backoff_delay",
        "change_to_contact", "mapped_crm_fields", "should_poll"]
    assert sorted(crmsync.actions.__all__) == ["ConsentRefused", "send", "subscribe"]
    for module in (crmsync.server, crmsync.engine.realtime, crmsync.actions):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_every_server_setting_is_documented() -> None:
    for name in ServerConfig.model_fields:
        assert re.search(rf"^{name} = ", GUIDE, re.MULTILINE), f"[server] {name} undocumented"


def test_every_metric_is_documented() -> None:
    names = {metric.name for metric in Metrics().registry.collect()}
    for name in names:
        assert f"`{name}" in GUIDE, f"metric {name} undocumented"


def test_every_endpoint_and_command_is_documented() -> None:
    for path in ("/hooks/esp", "/hooks/crm", "/healthz", "/readyz", "/metrics", "/subscribe",
                 "/send"):
        assert f"`{path}" in GUIDE or f"`GET {path}" in GUIDE or path in GUIDE
    for command in ("serve", "replay", "subscribe", "send"):
        assert command in cli.commands
        assert f"crmsync {command}" in GUIDE or f"crmsync --connector salesforce {command}" \
            in GUIDE
