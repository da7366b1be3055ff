"""A CRM paired with an ESP in a ``crmsync.toml``, from an emulator's demo profile.

Tests of every connector, and ``crmsync demo``, build the same kind of configuration:
the CRM emulator says how to reach it (``Emulator.demo_profile()``), the caller says
which ESP and file space to pair it with. Needs ``tomli-w`` (test and demo extras).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..engine.batch import RunStats
from ..runtime import build_batch, open_side, open_store

__all__ = ["sync_once", "write_profile_config"]


def write_profile_config(path: Path, *, crm: str, profile: dict[str, Any],
                         esp: dict[str, Any], files: dict[str, Any] | None = None,
                         state: str = "sqlite:///state.db",
                         crm_settings: dict[str, Any] | None = None,
                         post_operations: list[dict[str, Any]] | None = None) -> Path:
    """Write ``path``: ``[crm]`` from the profile (plus ``crm_settings``), ``[esp]`` as
    given, the profile's ``[fields]`` and ``[[lists]]``. Secrets are not written: set
    ``profile["secrets"]`` in the environment."""
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
