"""``crmsync init``: a commented configuration template built from connector settings."""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from .contract import Connector

__all__ = ["render_template"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return '""'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _settings_table(connector: type[Connector]) -> list[str]:
    lines = []
    for name, field in connector.Settings.model_fields.items():
        description = field.description or ""
        if field.annotation in (SecretStr, SecretStr | None):
            lines.append(f"# {name}: secret, set CRMSYNC_{connector.name.upper()}_{name.upper()} "
                         "in the environment or the secrets file"
                         + (f" ({description})" if description else ""))
            continue
        if description:
            lines.append(f"# {description}")
        if field.default is PydanticUndefined and field.default_factory is None:
            lines.append(f"{name} = \"\"  # required")
        else:
            default = field.get_default(call_default_factory=True)
            if default is None:
                lines.append(f"# {name} =   (unset by default)")
            else:
                lines.append(f"# {name} = {_toml_value(default)}")
    return lines


def render_template(crm: type[Connector], esp: type[Connector]) -> str:
    """The text of a starter ``crmsync.toml`` for this CRM and ESP."""
    out = [
        f"# crmsync configuration for {crm.name} <-> {esp.name}",
        "# Secrets never go here: use the environment or secrets_file (KEY=value lines).",
        '# secrets_file = ".crmsync.secrets"',
        "",
        "[state]",
        '# SQLite next to this file, or "postgresql://user@host/db"',
        'url = "sqlite:///crmsync.db"',
        "",
        "[crm]",
        f'connector = "{crm.name}"',
        "[crm.settings]",
        *_settings_table(crm),
        "",
        "[esp]",
        f'connector = "{esp.name}"',
        '# "api" writes through the ESP API; "files" exchanges files over [files]',
        'mode = "files"' if esp.capabilities.file_exchange else 'mode = "api"',
        "[esp.settings]",
        *_settings_table(esp),
        "",
        "[files]",
        "# file://, ftp://, ftps:// (explicit TLS) or sftp://; password in CRMSYNC_FILES_PASSWORD",
        'url = "file://./exchange"',
        '# username = "m12345"',
        'import_dir = "in"        # where import files are uploaded',
        'export_dir = "out"       # where the ESP drops unsubscription exports',
        'archive_dir = "archive"  # processed exports are moved here',
        "",
        "[fields]   # CRM field = ESP field",
        '# FirstName = "name"',
        "",
        "[[lists]]",
        'name = "Newsletter"',
        'esp_list = "1"',
        'members = "all"          # all | campaign:<id> | target_list:<id> | field:<name>=<value>',
        '# opt_out = "HasOptedOutOfEmail"   # a true value means unsubscribed from this list',
        '# groups = { field = "Interests" } # each value becomes a group of the list',
        '# status = { Responded = "subscribed", "Opted Out" = "unsubscribed" }',
        "",
        "# [[post_operations]]",
        '# on = "unsubscribe"',
        '# from_list = "1"',
        '# unsubscribe_from = ["2"]            # or "all"',
        "",
        "[consent]",
        'resubscribe = "never"    # never | explicit_newer',
        'deletes = "unsubscribe"  # unsubscribe | delete | ignore',
        "",
        "[server]",
        'listen = "127.0.0.1:8080"',
        "poll_interval_s = 30",
        "",
    ]
    return "\n".join(out)
