"""The ``crmsync`` command.

Global options come before the command: ``crmsync --connector NAME --config
crmsync.toml --json sync``. ``crmsync --connector NAME`` alone runs ``sync``. Exit codes:
0 all went well, 1 some records failed, 2 usage or configuration error, 3 another
crmsync error (the message says what to do).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__
from .errors import ConfigError, CrmsyncError, DataError, PluginError

if TYPE_CHECKING:
    from rich.console import Console

    from .config import Config

# Start-up cost is paid by every cron run: what a command needs (pydantic, httpx,
# SQLAlchemy, rich, the connectors' registry) is imported inside it, and the commands
# of crmsync/commands/ are imported when invoked (CrmsyncGroup), so that
# `crmsync --version` imports none of it.

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


@dataclass
class Context:
    connector: str | None
    config_path: Path
    as_json: bool
    verbose: int
    console: Console
    log_format: str | None = None  # --log-format, else [logging] format
    mask_emails: bool | None = None  # --mask-emails / --no-mask-emails
    pairs_dir: Path | None = None  # --pairs: a many-pairs deployment's folder
    pair: str | None = None  # --pair: the one pair of it this command is about

    def config(self, *, required: bool = True) -> Config:
        from .config import Config, load_config, load_pairs, pair_names

        if self.pair is None and self.pairs_dir is not None:
            names = ", ".join(pair_names(self.pairs_dir))
            raise ConfigError(f"this command is about one pair: pass --pair NAME "
                              f"(pairs in {self.pairs_dir}: {names})")
        if self.pair is not None:
            config = load_pairs(self.pairs_dir or Path("pairs"), only=self.pair)[self.pair]
            if self.log_format is None or self.mask_emails is None:
                self.configure_logging(config)
            return config
        if not self.config_path.exists() and not required:
            return Config()
        config = load_config(self.config_path)
        if self.log_format is None or self.mask_emails is None:
            self.configure_logging(config)
        if self.connector and config.crm and config.crm.connector != self.connector:
            if config.esp and config.esp.connector == self.connector:
                return config
            raise ConfigError(
                f"--connector {self.connector} but {self.config_path} configures "
                f"crm.connector = {config.crm.connector!r}: pass the matching name or fix the file"
            )
        return config

    def pairs(self) -> dict[str, Config] | None:
        """The pairs a deployment-wide command (serve, worker, status, schedule) serves:
        every pair of ``--pairs``, or the one of ``--pair``; None without either (one
        crmsync.toml, the pair ``default``)."""
        from .config import load_pairs

        if self.pair is None and self.pairs_dir is None:
            return None
        pairs = load_pairs(self.pairs_dir or Path("pairs"), only=self.pair)
        if self.log_format is None or self.mask_emails is None:
            self.configure_logging(next(iter(pairs.values())))
        return pairs

    @property
    def json_logs(self) -> bool:
        return self.log_format == "json"

    def configure_logging(self, config: Config | None = None) -> None:
        """The command line's logging options, then the configuration's [logging]."""
        from .logs import configure_logging

        settings = config.logging if config is not None else None
        log_format = self.log_format or (settings.format if settings else "text")
        mask = self.mask_emails if self.mask_emails is not None else (
            settings.mask_emails if settings else None)
        if config is not None:
            self.log_format, self.mask_emails = log_format, mask
        configure_logging([logging.WARNING, logging.INFO, logging.DEBUG][min(self.verbose, 2)],
                          "json" if log_format == "json" else "text", mask=mask)

    def emit(self, data: Any, render: Callable[[], None] | None = None) -> None:
        if self.as_json:
            click.echo(json.dumps(data, default=_json_default, sort_keys=True))
        elif render is not None:
            render()
        else:
            self.console.print(data)


def _json_default(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def email_param(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: an address given on the command line is checked, as at every
    other way in; a bad one is a usage error (exit 2)."""
    if value is None:
        return None
    from .model import normalize_email

    try:
        return normalize_email(value)
    except ValueError as exc:
        raise ConfigError(f"{param.human_readable_name}: {exc}: give name@domain") from None


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"crmsync: error: {message}", err=True)
    sys.exit(code)


_ANYWHERE = frozenset({"--json", "-v", "-vv", "-vvv", "--verbose", "--mask-emails",
                       "--no-mask-emails"})
_ANYWHERE_VALUED = frozenset({"--log-format", "--pair", "--pairs"})

# The commands defined in crmsync/commands/<module>.py, imported when one is invoked.
LAZY_COMMANDS = {"demo": "demo", "serve": "serve", "replay": "serve", "subscribe": "serve",
                 "send": "serve", "sync": "sync", "status": "sync", "console": "console",
                 "contact": "contact", "forget": "ledger", "journal": "ledger",
                 "proof": "ledger", "worker": "serve",
                 "schedule": "serve", "migrate-state": "migrate"}


class CrmsyncGroup(click.Group):
    """Turns crmsync errors into one clear line and the documented exit code.

    ``--json``, ``-v``, ``--log-format`` and ``--mask-emails`` are accepted after the
    command too (``crmsync sync --json``), as the README writes them: they are moved
    before it.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            head, tail = args[:args.index("--")], args[args.index("--"):]
        else:
            head, tail = args, []
        moved: list[str] = []
        rest: list[str] = []
        items = iter(head)
        for arg in items:
            if arg in _ANYWHERE or (arg.split("=", 1)[0] in _ANYWHERE_VALUED and "=" in arg):
                moved.append(arg)
            elif arg in _ANYWHERE_VALUED:
                moved.extend([arg, next(items, "")])
            else:
                rest.append(arg)
        return super().parse_args(ctx, moved + rest + tail)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            importlib.import_module(f"{__package__}.commands.{LAZY_COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted(set(LAZY_COMMANDS.values())):
            importlib.import_module(f"{__package__}.commands.{module}")
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        except PluginError as exc:
            fail(str(exc), EXIT_USAGE)
        except DataError as exc:  # what the user gave is not acceptable as given
            fail(str(exc), EXIT_USAGE)
        except CrmsyncError as exc:
            fail(str(exc), EXIT_ERROR)


@click.group(cls=CrmsyncGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--connector", "-c", metavar="NAME", envvar="CRMSYNC_CONNECTOR",
              help="The CRM connector to use (see `crmsync connectors`).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default="crmsync.toml", envvar="CRMSYNC_CONFIG", show_default=True,
              help="The configuration file.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              envvar="CRMSYNC_LOG_FORMAT",
              help="Log lines as text or as JSON objects (each with run_id during a run); "
                   "default: [logging] format, else text.")
@click.option("--mask-emails/--no-mask-emails", default=None,
              help="Mask addresses in log lines (a***@example.com); default: on with "
                   "--log-format json, off in text.")
@click.option("--pairs", "pairs_dir", metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              default=None, envvar="CRMSYNC_PAIRS",
              help="A many-pairs deployment: DIR/<pair>/crmsync.toml for each CRM-ESP "
                   "pair. serve, worker, status and schedule then serve every pair.")
@click.option("--pair", metavar="NAME", default=None, envvar="CRMSYNC_PAIR",
              help="The one pair of --pairs (default folder: pairs) a command is about: "
                   "its crmsync.toml, secrets prefix and state.")
@click.version_option(__version__, prog_name="crmsync")
@click.pass_context
def cli(ctx: click.Context, connector: str | None, config_path: Path, as_json: bool,
        verbose: int, log_format: str | None, mask_emails: bool | None,
        pairs_dir: Path | None, pair: str | None) -> None:
    """Keep a CRM and an email-marketing platform in sync, both ways.

    `crmsync --connector NAME` alone runs `sync`. Start with `crmsync demo`.
    """
    from rich.console import Console

    if pair is not None:
        from .config import PAIR_FILE, pair_name

        config_path = (pairs_dir or Path("pairs")) / pair_name(pair) / PAIR_FILE
    ctx.obj = Context(connector, config_path, as_json, verbose,
                      Console(stderr=False, soft_wrap=True), log_format, mask_emails,
                      pairs_dir, pair)
    ctx.obj.configure_logging()
    if ctx.invoked_subcommand is None:
        if connector is None:
            click.echo(ctx.get_help())
            return
        sync_command = cli.get_command(ctx, "sync")
        assert sync_command is not None
        ctx.invoke(sync_command)


@cli.command()
@click.pass_obj
def connectors(obj: Context) -> None:
    """List installed connectors: name, kind, version, capabilities, distribution.

    Test doubles are marked: the in-memory CRM and ESP, and each connector's emulator
    (`crmsync emulate NAME`), for tests and the demo; crmsync[emulators] installs them.
    """
    from rich.markup import escape
    from rich.table import Table

    from .registry import CONNECTORS, EMULATORS, available, registered

    rows = []
    emulators = set(registered(EMULATORS))  # named, not imported
    for info in available(CONNECTORS):
        caps = info.plugin.capabilities if info.plugin is not None else None
        rows.append({
            "name": info.name,
            "test_double": info.test_double,
            "kind": caps.kind if caps else None,
            "version": info.version,
            "distribution": info.distribution,
            "capabilities": caps.enabled() if caps else [],
            "emulator": info.name in emulators,
            "error": info.error,
        })

    def render() -> None:
        table = Table(title="crmsync connectors")
        table.add_column("name", no_wrap=True)
        for column in ("kind", "version", "capabilities", "distribution", "emulator"):
            table.add_column(column)
        for row in rows:
            emulator = "test double" if row["emulator"] else ""
            if row["error"]:
                table.add_row(row["name"], "[red]broken[/red]", row["version"], "",
                              row["distribution"], emulator)
            else:
                table.add_row(row["name"] + (" (test double)" if row["test_double"] else ""),
                              row["kind"], row["version"],
                              ", ".join(c for c in row["capabilities"] if c != "kind"),
                              row["distribution"], emulator)
        obj.console.print(table)
        for row in rows:
            if row["error"]:
                obj.console.print(f"[red]broken:[/red] {escape(row['error'])}", markup=True,
                                  highlight=False)

    obj.emit(rows, render)


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def emulator_options(options: tuple[str, ...]) -> dict[str, Any]:
    """``--option KEY=VALUE`` arguments as keyword arguments of an emulator."""
    kwargs: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {option!r}: expected KEY=VALUE")
        if key in ("contacts", "seed"):
            raise ConfigError(f"--option {key}=...: use --{key} instead")
        kwargs[key] = value
    return kwargs


def make_emulator(name: str, options: tuple[str, ...], **kwargs: Any) -> Any:
    """The emulator of connector ``name`` with ``--option`` values; a bad option is a
    usage error naming the emulator."""
    from .registry import load_emulator

    emulator_class = load_emulator(name)
    try:
        return emulator_class(**kwargs, **emulator_options(options))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--option for the {name} emulator: {exc}") from None


@cli.command()
@click.option("--port", "-p", type=int, default=0, help="Port (default: a free one).")
@click.option("--contacts", "-n", type=int, default=100, show_default=True,
              help="Generated contacts to start with.")
@click.option("--seed", "-s", type=int, default=0, show_default=True)
@click.option("--tls/--no-tls", default=None, help="Serve HTTPS from a throw-away CA.")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Emulator option (e.g. flavour=v4_1).")
@click.argument("name")
@click.pass_obj
def emulate(obj: Context, name: str, port: int, contacts: int, seed: int, tls: bool | None,
            options: tuple[str, ...]) -> None:
    """Serve the emulator of connector NAME on 127.0.0.1 until Ctrl-C.

    The control API is under /_emulator/ (reset, seed, state, requests, faults,
    unsubscribe); see docs/emulators.md.
    """
    from rich.markup import escape

    from .emulator import EmulatorServer
    from .registry import load
    from .template import side_text

    emulator = make_emulator(name, options, contacts=contacts, seed=seed)
    use_tls = bool(getattr(type(emulator), "tls", False)) if tls is None else tls
    try:
        server = EmulatorServer(emulator, port=port, tls=use_tls).start()
    except OSError as exc:
        raise ConfigError(f"cannot serve the {name} emulator on 127.0.0.1:{port}: "
                          f"{exc.strerror or exc}: pick another --port") from None
    profile = emulator.demo_profile()
    side = "esp" if load(name).capabilities.kind == "esp" else "crm"
    block = side_text(side, name, profile).rstrip()
    secrets = dict(profile.get("secrets", {}))
    info = {"name": name, "url": server.url, "control": f"{server.url}/_emulator/",
            "ca": server.ca_path, "contacts": contacts, "config": block,
            "environment": secrets}
    exports = "\n".join(f"export {key}={_shell_quote(value)}"
                        for key, value in secrets.items())
    obj.emit(info, lambda: obj.console.print(
        f"[bold]{name}[/bold] emulator on {server.url} ({contacts} contacts)\n"
        f"control API: {server.url}/_emulator/state, /requests, /faults, /reset, /seed, "
        "/profile"
        + (f"\ntrust this CA: {server.ca_path}" if server.ca_path else "")
        + f"\n\n# crmsync.toml: the {side} side on this emulator\n{escape(block)}\n"
        + "\n# its throw-away credentials (published, not secret):\n" + escape(exports)
        + "\n\n# or write a whole configuration from two running emulators:\n"
        + f"#   crmsync init --emulator {server.url} --emulator <the other one's URL>"
        + (f" --ca {server.ca_path}" if server.ca_path else "")
        + "\nCtrl-C to stop", highlight=False))
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@cli.command()
@click.option("--connector", "-c", "name", metavar="NAME", help="Template for this CRM.")
@click.option("--esp", default=None,
              help="The ESP connector (default: the first installed ESP connector that is "
                   "not a test double).")
@click.option("--emulator", "emulators", multiple=True, metavar="URL",
              help="A running `crmsync emulate` (give the CRM's and the ESP's): write a "
                   "working configuration for them, credentials in .crmsync.secrets.")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The CA an https emulator printed (`trust this CA: ...`).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_obj
def init(obj: Context, name: str | None, esp: str, emulators: tuple[str, ...],
         ca_file: str | None, force: bool) -> None:
    """Write a commented crmsync.toml template for a connector (or, with --emulator, a
    working one for running emulators)."""
    from .registry import CONNECTORS, available, load
    from .template import render_emulator_config, render_template, secrets_text

    name = name or obj.connector
    if obj.config_path.exists() and not force:
        raise ConfigError(f"{obj.config_path} exists: pass --force to overwrite it")
    env_prefix = "CRMSYNC_"
    if obj.pair is not None:  # a new pair's folder (--pairs DIR --pair NAME init)
        from .config import Config

        obj.config_path.parent.mkdir(parents=True, exist_ok=True)
        env_prefix = Config().for_pair(obj.pair).secrets_prefix()
    if emulators:
        profiles = {kind: (connector, profile) for kind, connector, profile in
                    (_emulator_profile(url, ca_file) for url in emulators)}
        if set(profiles) != {"crm", "esp"} or len(emulators) != 2:
            raise ConfigError("give two --emulator URLs: the CRM's and the ESP's (each "
                              "`crmsync emulate NAME` prints its URL)")
        if name and profiles["crm"][0] != name:
            raise ConfigError(f"--connector {name} but the CRM emulator is "
                              f"{profiles['crm'][0]}")
        name, esp = profiles["crm"][0], profiles["esp"][0]
        secrets_path = obj.config_path.with_name(".crmsync.secrets")
        if secrets_path.exists() and not force:
            raise ConfigError(f"{secrets_path} exists: pass --force to overwrite it")
        secrets = {**profiles["crm"][1].get("secrets", {}),
                   **profiles["esp"][1].get("secrets", {})}
        secrets_path.write_text(secrets_text(secrets), encoding="utf-8")
        secrets_path.chmod(0o600)
        obj.config_path.write_text(render_emulator_config(
            profiles["crm"], profiles["esp"], secrets_file=secrets_path.name), encoding="utf-8")
        obj.emit({"written": str(obj.config_path), "secrets": str(secrets_path), "crm": name,
                  "esp": esp}, lambda: obj.console.print(
            f"wrote {obj.config_path} and {secrets_path} for the {name} and {esp} emulators: "
            f"run `crmsync --connector {name} check`", highlight=False))
        return
    if not name:
        raise ConfigError("say which CRM: crmsync init --connector NAME (see `crmsync connectors`)")
    crm_class = load(name)
    if esp is None:
        esps = [info.name for info in available(CONNECTORS) if info.error is None
                and info.plugin.capabilities.kind == "esp"
                and not info.test_double]
        if not esps:
            raise ConfigError("no ESP connector is installed: pass --esp NAME "
                              "(see `crmsync connectors`)")
        esp = esps[0]
    esp_class = load(esp)
    obj.config_path.write_text(render_template(crm_class, esp_class, env_prefix=env_prefix),
                               encoding="utf-8")
    obj.emit({"written": str(obj.config_path), "crm": name, "esp": esp},
             lambda: obj.console.print(f"wrote {obj.config_path}: edit it, then run "
                                       f"`crmsync --connector {name} check`"))


def _emulator_profile(url: str, ca_file: str | None) -> tuple[str, str, dict[str, Any]]:
    """(kind, connector, profile) of the running emulator at ``url``."""
    import httpx

    from .registry import load

    try:
        answer = httpx.get(url.rstrip("/") + "/_emulator/profile", timeout=10,
                           verify=ssl_context(ca_file) if ca_file else True)
        answer.raise_for_status()
        profile = answer.json()
    except httpx.ConnectError as exc:
        hint = (" (an https emulator: pass --ca with the CA it printed)"
                if "CERTIFICATE" in str(exc).upper() else
                ": is `crmsync emulate NAME` running there?")
        raise ConfigError(f"--emulator {url}: cannot connect{hint}") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"--emulator {url}: not a crmsync emulator ({exc})") from None
    connector = str(profile.pop("connector", ""))
    return load(connector).capabilities.kind, connector, profile


def ssl_context(ca_file: str) -> Any:
    import ssl

    return ssl.create_default_context(cafile=ca_file)


@cli.command()
@click.pass_obj
def check(obj: Context) -> None:
    """Authenticate and reach both sides; print what each reports."""
    from rich.markup import escape

    from .runtime import open_side

    config = obj.config()
    results = {}
    for side in ("crm", "esp"):
        side_config = getattr(config, side)
        if side_config is None:
            continue
        try:
            with open_side(config, side) as connector:
                health = connector.check()
                results[side] = {"connector": side_config.connector, "ok": health.ok,
                                 "detail": health.detail, "latency_ms": health.latency_ms}
        except CrmsyncError as exc:
            results[side] = {"connector": side_config.connector, "ok": False, "detail": str(exc)}

    def render() -> None:
        for side, result in results.items():
            mark = "[green]ok[/green]" if result["ok"] else "[red]FAILED[/red]"
            obj.console.print(f"{side} ({result['connector']}): {mark} "
                              f"{escape(str(result['detail']))}")

    obj.emit(results, render)
    # check tests the configuration: a side that refuses it (credentials, settings, a
    # URL it cannot be reached at) is a configuration error
    if not all(result["ok"] for result in results.values()):
        sys.exit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``crmsync`` script."""
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    cli.main(args=argv, prog_name="crmsync")

