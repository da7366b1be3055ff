"""A CRM paired with an ESP in a ``crmsync.toml``, from an emulator's demo profile.

Tests of every connector, and ``crmsync demo``, build the same kind of configuration:
the CRM emulator says how to reach it (``Emulator.demo_profile()``), the caller says
which ESP and file space to pair it with. Needs ``tomli-w`` (test and demo extras).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, load_config
from ..engine.batch import RunStats
from ..runtime import build_batch, open_side, open_store
from .memory import MemoryStore, store

if TYPE_CHECKING:
    from ..contract import Connector
    from ..server import RealtimeService, ServerThread

__all__ = ["MemoryEspPair", "serving_realtime", "sync_once", "write_profile_config"]


def write_profile_config(path: Path, *, crm: str, profile: dict[str, Any],
                         esp: dict[str, Any], files: dict[str, Any] | None = None,
                         state: str = "sqlite:///state.db",
                         crm_settings: dict[str, Any] | None = None,
                         post_operations: list[dict[str, Any]] | None = None,
                         tables: dict[str, Any] | None = None) -> Path:
    """Write ``path``: ``[crm]`` from the profile (plus ``crm_settings``), ``[esp]`` as
    given, the profile's ``[fields]`` and ``[[lists]]``, and any other ``tables``
    (``{"server": {...}}``). Secrets are not written: set ``profile["secrets"]`` in the
    environment."""
    import tomli_w

    settings = {k: v for k, v in {**profile["settings"], **(crm_settings or {})}.items()
                if v is not None}  # TOML has no null
    data: dict[str, Any] = {
        "state": {"url": state},
        "crm": {"connector": crm, "settings": settings},
        "esp": esp,
        "fields": profile["fields"],
        "lists": profile["lists"],
    }
    if files is not None:
        data["files"] = files
    if post_operations:
        data["post_operations"] = post_operations
    data.update(tables or {})
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def sync_once(config: Config, **run: Any) -> RunStats:
    """One batch run with the configured connectors and state store, closed after."""
    store = open_store(config)
    try:
        with open_side(config, "crm") as crm, open_side(config, "esp") as esp:
            return build_batch(config, crm, esp, store).run(**run)
    finally:
        store.close()


class MemoryEspPair:
    """A CRM paired with the in-memory ESP (API mode) in ``folder``: the CRM side from a
    demo profile (``emulator.demo_profile()``), its throw-away secrets put in the
    environment with ``setenv`` (``monkeypatch.setenv``). ``pair()`` runs one batch sync;
    ``pair.esp`` is the ESP's store, ``pair.esp_lists(email)`` one recipient's lists."""

    def __init__(self, folder: Path, crm: str, profile: dict[str, Any], *,
                 setenv: Callable[[str, str], object] | None = None,
                 crm_settings: dict[str, Any] | None = None,
                 state: str = "sqlite:///state.db") -> None:
        for key, value in profile.get("secrets", {}).items():
            if setenv is not None:
                setenv(key, value)
        esp_path = folder / "esp.json"
        self.config: Config = load_config(write_profile_config(
            folder / "crmsync.toml", crm=crm, profile=profile, crm_settings=crm_settings,
            esp={"connector": "memory-esp", "mode": "api", "settings": {"path": str(esp_path)}},
            state=state))
        self.esp: MemoryStore = store(path=esp_path)

    def __call__(self, **run: Any) -> RunStats:
        return sync_once(self.config, **run)

    def esp_lists(self, email: str) -> dict[str, Any]:
        """``{list id: {"status", "groups", ...}}`` of ``email`` at the ESP (``{}``: none)."""
        self.esp._load()
        record_id = self.esp.by_email(email)
        if record_id is None:
            return {}
        lists: dict[str, Any] = self.esp.records[record_id]["lists"]
        return lists


@contextlib.contextmanager
def serving_realtime(config: Config, *, environ: Mapping[str, str],
                     crm: Connector | None = None, esp: Connector | None = None,
                     prime: bool = True, **options: Any
                     ) -> Iterator[tuple[RealtimeService, ServerThread]]:
    """``crmsync serve`` on 127.0.0.1 for a test: the service over the configured sides
    (or the ``crm`` / ``esp`` given), with the hook secrets of ``environ``, primed by a
    first full read (the ESP and the id map know everyone), served over real HTTP. The
    server, the service (its connectors) and the state store are closed at the end."""
    from ..runtime import build_hooks
    from ..server import RealtimeService, ServerThread

    state = open_store(config)
    try:
        service = RealtimeService(config, crm or open_side(config, "crm"),
                                  esp or open_side(config, "esp"), state,
                                  hooks=build_hooks(config), environ=dict(environ), **options)
        try:
            if prime:
                service.worker.poll_once()
            server = ServerThread(service).start()
            try:
                yield service, server
            finally:
                server.stop()
        finally:
            service.close()
    finally:
        state.close()
