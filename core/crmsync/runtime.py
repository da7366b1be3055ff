"""Building connectors from the configuration."""

from __future__ import annotations

from typing import Literal

from .config import Config
from .contract import Connector
from .errors import ConfigError
from .registry import load

__all__ = ["build_connector", "open_side"]


def build_connector(name: str, settings: dict[str, object] | None = None, *,
                    secrets_file: str | None = None) -> Connector:
    """Load connector ``name`` and validate its settings (secrets from the environment)."""
    connector_class = load(name)
    loaded = connector_class.Settings.load(name, dict(settings or {}), secrets_file=secrets_file)
    return connector_class(loaded)


def open_side(config: Config, side: Literal["crm", "esp"]) -> Connector:
    """The connector configured as ``[crm]`` or ``[esp]``."""
    side_config = getattr(config, side)
    if side_config is None:
        raise ConfigError(f"the configuration has no [{side}] table: add one "
                          f"(`crmsync init` writes a template)")
    connector = build_connector(
        side_config.connector, side_config.settings,
        secrets_file=str(config.path(config.secrets_file)) if config.secrets_file else None,
    )
    if connector.capabilities.kind != side:
        raise ConfigError(f"[{side}] connector {side_config.connector!r} is a "
                          f"{connector.capabilities.kind} connector, not a {side} one")
    return connector
