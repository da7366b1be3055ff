"""``crmsync init``: a commented configuration template built from connector settings,
or a working configuration for running emulators (``crmsync init --emulator URL``)."""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import textwrap
import tokenize
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from .contract import Connector

__all__ = ["emulator_block", "render_emulator_config", "render_template", "secrets_text",
           "side_text"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


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
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _toml_key(key: Any) -> str:
    return str(key) if _BARE_KEY.match(str(key)) else json.dumps(str(key))


def _source_notes(settings: type[BaseModel]) -> dict[str, str]:
    """What the settings' source says about each field: the ``#`` comments above it or
    beside it, or the docstring under it (not every connector writes descriptions)."""
    notes: dict[str, str] = {}
    for klass in reversed(settings.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or \
                klass.__module__.startswith(("pydantic", "crmsync.contract")):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
            body = ast.parse(source).body[0]
            comments = {token.start[0]: token.string.lstrip("#").strip()
                        for token in tokenize.generate_tokens(io.StringIO(source).readline)
                        if token.type == tokenize.COMMENT}
        except (OSError, TypeError, SyntaxError, tokenize.TokenError, IndexError):
            continue
        lines = source.splitlines()
        items = getattr(body, "body", [])
        for index, node in enumerate(items):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            parts: list[str] = []
            above = node.lineno - 1
            while above >= 1 and lines[above - 1].strip().startswith("#"):
                parts.insert(0, comments.get(above, ""))
                above -= 1
            if node.end_lineno in comments and not lines[node.end_lineno - 1].strip(
                    ).startswith("#"):
                parts.append(comments[node.end_lineno or 0])
            following = items[index + 1] if index + 1 < len(items) else None
            if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                parts.append(" ".join(following.value.value.split("\n\n")[0].split()))
            if parts:
                notes[node.target.id] = " ".join(part for part in parts if part)
    return notes


def _settings_table(connector: type[Connector], env_prefix: str = "CRMSYNC_") -> list[str]:
    lines = []
    notes = _source_notes(connector.Settings)
    for name, field in connector.Settings.model_fields.items():
        description = field.description or notes.get(name, "")
        if field.annotation in (SecretStr, SecretStr | None):
            env = f"{env_prefix}{connector.name.upper()}_{name.upper()}"
            lines.append(f"# {name}: secret, set {env} in the environment or the secrets file"
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


def _crm_profile(crm: type[Connector]) -> dict[str, Any] | None:
    """The CRM's stock field names, from the demo profile of its emulator when it ships
    one (the connector package knows its vendor; the core does not)."""
    from .registry import load_emulator

    try:
        profile = load_emulator(crm.name)().demo_profile()
    except Exception:  # no emulator, or one that needs a running server: no suggestion
        return None
    return profile if isinstance(profile, dict) else None


def _list_lines(item: dict[str, Any], *, comment: bool = False) -> list[str]:
    mark = "# " if comment else ""
    lines = [f"{mark}[[lists]]"]
    for key, value in item.items():
        lines.append(f"{mark}{_toml_key(key)} = {_toml_value(value)}")
    return lines


def render_template(crm: type[Connector], esp: type[Connector], *,
                    env_prefix: str = "CRMSYNC_") -> str:
    """The text of a starter ``crmsync.toml`` for this CRM and ESP (``env_prefix``: where
    its secrets are in the environment; one pair's of a many-pairs deployment)."""
    profile = _crm_profile(crm) or {}
    lists = [dict(item) for item in profile.get("lists", [])]
    first = lists[0] if lists else {"name": "Newsletter", "esp_list": "1", "members": "all"}
    first = {"name": "Newsletter", "esp_list": "1", "members": "all",
             **{k: v for k, v in first.items() if k in ("opt_out", "groups")}}
    list_lines = [
        "[[lists]]",
        'name = "Newsletter"',
        'esp_list = "1"',
        'members = "all"          # all | campaign:<id> | target_list:<id> | field:<name>=<value>',
    ]
    if "opt_out" in first:
        list_lines.append(f"opt_out = {_toml_value(first['opt_out'])}"
                          "   # the CRM's opt-out: true = unsubscribed from this list")
    else:
        list_lines.append('# opt_out = "<the CRM\'s opt-out field>"   # true = unsubscribed')
    if "groups" in first:
        list_lines.append(f"# groups = {_toml_value(first['groups'])}"
                          " # each value becomes a group of the list")
    else:
        list_lines.append('# groups = { field = "Interests" } # each value becomes a group')
    for item in lists[1:2]:
        list_lines += ["", "# another list, from a campaign / target list of the CRM:",
                       *_list_lines(item, comment=True)]
    fields = profile.get("fields") or {}
    field_lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in fields.items()] or \
        ['# FirstName = "name"']
    out = [
        f"# crmsync configuration for {crm.name} <-> {esp.name}",
        "# Secrets never go here: use the environment or secrets_file (KEY=value lines).",
        '# secrets_file = ".crmsync.secrets"',
        "",
        "[state]",
        '# SQLite next to this file, or "postgresql+psycopg://user@host/db"',
        'url = "sqlite:///crmsync.db"',
        "",
        "[crm]",
        f'connector = "{crm.name}"',
        "[crm.settings]",
        *_settings_table(crm, env_prefix),
        "",
        "[esp]",
        f'connector = "{esp.name}"',
        '# "api" writes through the ESP API; "files" exchanges files over [files]',
        'mode = "files"' if esp.capabilities.file_exchange else 'mode = "api"',
        "[esp.settings]",
        *_settings_table(esp, env_prefix),
        "",
        "[files]",
        "# file://, ftp://, ftps:// (explicit TLS) or sftp://; password in "
        f"{env_prefix}FILES_PASSWORD",
        'url = "file://./exchange"',
        '# username = "m12345"',
        'import_dir = "in"        # where import files are uploaded',
        'export_dir = "out"       # where the ESP drops unsubscription exports',
        'archive_dir = "archive"  # processed exports are moved here',
        "",
        "[fields]   # CRM field = ESP field",
        *field_lines,
        "",
        *list_lines,
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


def emulator_block(side: str, name: str, profile: dict[str, Any]) -> list[str]:
    """The ``[crm]`` or ``[esp]`` table that connects to a running emulator."""
    lines = [f"[{side}]", f'connector = "{name}"']
    if side == "esp":
        lines.append('mode = "api"')
    lines.append(f"[{side}.settings]")
    lines += [f"{_toml_key(k)} = {_toml_value(v)}"
              for k, v in profile.get("settings", {}).items() if v is not None]
    return lines


def secrets_text(secrets: dict[str, str]) -> str:
    """A secrets file (``KEY=value`` lines; a multi-line value double-quoted with
    ``\\n``, one with spaces, ``#`` or quotes single-quoted), as
    :func:`crmsync.config.read_secrets_file` (python-dotenv) reads it back."""
    lines = ["# throw-away credentials of crmsync's emulators (published, not secret)"]
    for key, value in secrets.items():
        if re.fullmatch(r"[\w./:@+=,-]*", value):
            text = value
        elif "\n" in value or "'" in value:
            text = json.dumps(value, ensure_ascii=False)
        else:
            text = f"'{value}'"
        lines.append(f"{key}={text}")
    return "\n".join(lines) + "\n"


def side_text(side: str, name: str, profile: dict[str, Any]) -> str:
    """What ``crmsync.toml`` needs to use one emulator: its ``[crm]`` / ``[esp]`` table,
    and for a CRM its ``[fields]`` and ``[[lists]]``."""
    out = emulator_block(side, name, profile)
    if side == "crm":
        out += ["", "[fields]   # CRM field = ESP field",
                *[f"{_toml_key(k)} = {_toml_value(v)}"
                  for k, v in profile.get("fields", {}).items()]]
        for item in profile.get("lists", []):
            out += ["", *_list_lines(item)]
    return "\n".join(out) + "\n"


def render_emulator_config(crm: tuple[str, dict[str, Any]], esp: tuple[str, dict[str, Any]],
                           *, secrets_file: str = ".crmsync.secrets") -> str:
    """A working ``crmsync.toml`` for a CRM emulator and an ESP emulator (their
    ``/_emulator/profile``), the secrets in ``secrets_file`` beside it."""
    return "\n".join([
        f"# crmsync configuration for the {crm[0]} and {esp[0]} emulators",
        "# (crmsync emulate NAME); the emulators' throw-away credentials are in the",
        "# secrets file.",
        f"secrets_file = {_toml_value(secrets_file)}",
        "",
        "[state]",
        'url = "sqlite:///crmsync.db"',
        "",
        side_text("esp", *esp),
        side_text("crm", *crm),
        "[server]",
        'listen = "127.0.0.1:8080"',
        "poll_interval_s = 30",
        "",
    ])
