"""Building connectors from the configuration."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from .config import Config
from .contract import Connector
from .engine.apply import Observer
from .engine.batch import BatchSync, Progress
from .engine.postops import PostOperationRules
from .errors import ConfigError
from .files import FileSpace
from .hooks import Hooks, build_plugin_manager
from .registry import load
from .state import StateStore

__all__ = ["build_batch", "build_connector", "build_hooks", "open_files", "open_side",
           "open_store"]


def build_connector(name: str, settings: dict[str, object] | None = None, *,
                    secrets_file: str | None = None,
                    secrets: Mapping[str, str] | None = None) -> Connector:
    """Load connector ``name`` and validate its settings (secrets from the environment,
    then ``secrets`` / ``secrets_file``)."""
    connector_class = load(name)
    loaded = connector_class.Settings.load(name, dict(settings or {}), secrets_file=secrets_file,
                                           secrets=secrets)
    return connector_class(loaded)


def open_side(config: Config, side: Literal["crm", "esp"]) -> Connector:
    """The connector configured as ``[crm]`` or ``[esp]``.

    On a PostgreSQL state store its HTTP clients pace to the vendor account's rate
    shared by every crmsync process (:mod:`crmsync.ratelimit`), not to their own."""
    from .http import share_pacing

    side_config = getattr(config, side)
    if side_config is None:
        raise ConfigError(f"the configuration has no [{side}] table: add one "
                          f"(`crmsync init` writes a template)")
    url = config.state_url()
    shared = None
    if url.startswith("postgresql"):
        import contextlib

        from sqlalchemy.exc import ArgumentError

        from .ratelimit import rate_limits

        # a URL no engine can be made of: opening the state store says why
        with contextlib.suppress(ImportError, ValueError, ArgumentError):
            shared = rate_limits(url).pacer
    with share_pacing(shared):
        connector = build_connector(
            side_config.connector, side_config.settings, secrets=config.secrets())
    if connector.capabilities.kind != side:
        raise ConfigError(f"[{side}] connector {side_config.connector!r} is a "
                          f"{connector.capabilities.kind} connector, not a {side} one")
    return connector


def open_store(config: Config) -> StateStore:
    """The state store the configuration names."""
    return StateStore(config.state_url(), schema=config.state_schema())


def open_files(config: Config) -> FileSpace:
    """The batch file space of ``[files]``."""
    files = config.files
    return FileSpace(files.url, username=files.username, password=files.password(config.secrets()),
                     timeout=files.timeout_s, base_dir=Path(config.base_dir),
                     ca_file=str(config.path(files.ca_file)) if files.ca_file else None,
                     known_hosts=config.path(str(Path(files.known_hosts).expanduser())))


def build_hooks(config: Config, *, store: StateStore | None = None,
                crm: Connector | None = None, esp: Connector | None = None) -> Hooks:
    """Hooks with the built-in plugins registered like any plugin: the configured
    post-operation rules, the run id in log records, the journal's seals and the
    suppressions (ledger), and a batch run's metrics (``[metrics]``)."""
    from .logs import RunLogContext
    from .metrics_file import RunMetrics
    from .state.ledger import LedgerHooks

    # registered only when there are rules: with no post-operation at all, the engine
    # queues nothing after a status change
    rules: list[object] = ([PostOperationRules(config.post_operations,
                                               secrets=config.secrets())]
                           if config.post_operations else [])
    builtins = [*rules, RunLogContext(), LedgerHooks(config, store),
                RunMetrics(config, store, connectors=[c for c in (crm, esp) if c is not None])]
    return Hooks(build_plugin_manager(builtins))


def build_batch(config: Config, crm: Connector, esp: Connector, store: StateStore, *,
                progress: Progress | None = None,
                observer: Observer | None = None) -> BatchSync:
    """A batch run wired from the configuration (file space only in files mode);
    ``observer`` sees each contact's decision (``sync --dry-run -v`` prints them)."""
    files = open_files(config) if config.esp is not None and config.esp.mode == "files" else None
    return BatchSync(config, crm, esp, store,
                     hooks=build_hooks(config, store=store, crm=crm, esp=esp), files=files,
                     progress=progress, observer=observer)
