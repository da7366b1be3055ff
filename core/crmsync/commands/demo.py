"""``crmsync demo``: a whole two-way sync on emulators, with nothing to set up.

It starts the chosen CRM's emulator and the ESP's emulator, a local FTP server and a
SQLite state file in a temporary folder, then: a full sync (the import file goes up
over FTP, the ESP imports it), some recipients unsubscribe at the ESP and some
contacts change in the CRM, the ESP drops its unsubscription export, and a diff sync
carries both ways. It prints each step and the final state of the touched contacts.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..cli import Context, cli, emulator_options, make_emulator
from ..config import load_config
from ..emulator import Emulator, EmulatorServer
from ..errors import ConfigError, PluginError
from ..registry import CONNECTORS, EMULATORS, available, load_emulator
from ..runtime import build_batch, open_side, open_store
from .sync import render_stats


def _emulated(kind: str) -> list[str]:
    """Installed connectors of ``kind`` that ship an emulator, by name."""
    emulators = {info.name for info in available(EMULATORS) if info.error is None}
    return sorted(info.name for info in available(CONNECTORS)
                  if info.error is None and info.name in emulators
                  and info.plugin.capabilities.kind == kind
                  and (kind == "crm" or info.plugin.capabilities.file_exchange))


def _memory_profile(folder: Path, contacts: int) -> dict[str, Any]:
    from ..testing.memory import store

    crm = store(path=folder / "crm.json")
    crm.seed(contacts, seed=7)
    for number, record in enumerate(crm.records.values()):
        if number % 3 == 0:
            record["memberships"]["campaign:7"] = "Responded"
    crm.save()
    return {
        "settings": {"path": str(folder / "crm.json")}, "secrets": {},
        "fields": {"FirstName": "name", "LastName": "surname"},
        "lists": [
            {"name": "Newsletter", "esp_list": "1", "members": "all", "opt_out": "OptOut",
             "groups": {"field": "Interests"}},
            {"name": "Events", "esp_list": "2", "members": "campaign:7",
             "status": {"Responded": "subscribed", "Opted Out": "unsubscribed"}},
        ],
    }


def _crm_contacts(crm_name: str, emulator: Emulator | None, folder: Path) -> list[dict[str, Any]]:
    if emulator is not None:
        return list(emulator.state()["contacts"])
    from ..testing.memory import store

    crm = store(path=folder / "crm.json")
    crm._load()
    return [{"email": r["email"], "ids": {"memory": rid}, "fields": r["fields"],
             "opted_out": r["fields"].get("OptOut") == "true"} for rid, r in crm.records.items()]


def _crm_update(emulator: Emulator | None, folder: Path, email: str,
                fields: dict[str, str]) -> None:
    if emulator is not None:
        emulator.update_contact(email, fields)
        return
    from ..testing.memory import store

    crm = store(path=folder / "crm.json")
    crm.update(crm.by_email(email) or "", fields=fields)


@cli.command()
@click.option("--connector", "-c", "crm_name", default=None,
              help="The CRM to emulate (default: the first installed CRM connector with an "
                   "emulator; `memory` needs none).")
@click.option("--contacts", "-n", default=40, show_default=True, help="CRM contacts to start with.")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep everything in this folder (default: a temporary one, removed after).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="CRM emulator option, as for `crmsync emulate` (e.g. flavour=v4_1 for "
                   "SuiteCRM's legacy API).")
@click.pass_obj
def demo(obj: Context, crm_name: str | None, contacts: int, folder: Path | None,
         options: tuple[str, ...]) -> None:
    """Run a two-way sync on emulators: no account, no set-up."""
    from ..testing.pairs import write_profile_config
    from ..testing.servers import ftp_server

    crm_name = crm_name or obj.connector or next(iter(_emulated("crm")), "memory")
    kwargs = emulator_options(options)
    if crm_name == "memory" and kwargs:
        raise ConfigError("--option is for a CRM emulator; `memory` has none")
    esps = _emulated("esp")
    if not esps:
        raise ConfigError("the demo needs an ESP connector with an emulator and file exchange; "
                          "none is installed: run pip install 'crmsync[demo]' (the emulators "
                          "and the FTP server it runs on)")
    esp_name = esps[0]
    console = obj.console
    say = (lambda *a, **k: None) if obj.as_json else console.print
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crmsync-demo-")))
        folder.mkdir(parents=True, exist_ok=True)
        space = folder / "space"
        space.mkdir(exist_ok=True)
        password = secrets.token_urlsafe(12)
        port = stack.enter_context(ftp_server(space, user="demo", password=password))
        say(f"[bold]crmsync demo[/bold] — {crm_name} ⇄ {esp_name}, working in {folder}")
        say(f"  FTP space   ftp://127.0.0.1:{port}/  (the ESP's file space)")

        crm_emulator: Emulator | None = None
        if crm_name == "memory":
            profile = _memory_profile(folder, contacts)
        else:
            try:
                crm_emulator = make_emulator(crm_name, options, contacts=contacts, seed=7)
            except PluginError as exc:
                raise ConfigError(f"{exc}; try --connector memory") from None
            server = EmulatorServer(crm_emulator, tls=bool(getattr(crm_emulator, "tls", False)),
                                    workdir=folder).start()
            stack.callback(server.stop)
            profile = crm_emulator.demo_profile()
            say(f"  CRM         {crm_name} emulator on {server.url} ({contacts} contacts)")
        esp_options: dict[str, Any] = {"files_dir": str(space)}
        esp_emulator = load_emulator(esp_name)(**esp_options)
        esp_server = EmulatorServer(esp_emulator).start()
        stack.callback(esp_server.stop)
        esp_profile = esp_emulator.demo_profile()
        say(f"  ESP         {esp_name} emulator on {esp_server.url}")

        secrets_env = {**profile["secrets"], **esp_profile["secrets"],
                       "CRMSYNC_FILES_PASSWORD": password}

        config_path = folder / "crmsync.toml"
        write_profile_config(
            config_path, crm=crm_name, profile=profile,
            esp={"connector": esp_name, "mode": "files",
                 "settings": _clean(esp_profile["settings"])},
            files={"url": f"ftp://demo@127.0.0.1:{port}/"},
            post_operations=[{"on": "unsubscribe", "from_list": "1",
                              "unsubscribe_from": ["2"]}])
        say(f"  config      {config_path} (secrets held in memory, not written to disk)\n")
        # the secrets are handed over, not written into the process environment
        config = load_config(config_path, environ={**os.environ, **secrets_env})
        store = open_store(config)
        stack.callback(store.close)
        report: dict[str, Any] = {"connector": crm_name, "folder": str(folder)}

        def run(title: str, *, full: bool) -> dict[str, Any]:
            say(f"[bold cyan]▶ {title}[/bold cyan]")
            with open_side(config, "crm") as crm, open_side(config, "esp") as esp:
                stats = build_batch(config, crm, esp, store).run(full=full).as_dict()
            if not obj.as_json:
                render_stats(obj, stats)
            return stats

        report["full_sync"] = run("1. full sync: every CRM contact to the ESP, by file over FTP",
                                  full=True)
        imported = esp_emulator.import_files()
        say(f"   the ESP imported the file: {escape(_plain(imported))}\n")

        people = [c | {"email": c["email"].strip().lower()}
                  for c in _crm_contacts(crm_name, crm_emulator, folder)
                  if not c.get("opted_out") and not c.get("deleted") and c.get("email")]
        rng = random.Random(7)
        rng.shuffle(people)
        unsubscribers = [p["email"] for p in people[:3]]
        opt_out_field = next((item.get("opt_out") for item in profile["lists"]
                              if item.get("opt_out")), None)
        surname = next((crm for crm, esp in profile["fields"].items() if esp == "surname"), None)
        edited = [p["email"] for p in people[3:5]]
        opted_out_in_crm = [p["email"] for p in people[5:6]]
        say("[bold cyan]▶ 2. meanwhile...[/bold cyan]")
        for email in unsubscribers:
            esp_emulator.unsubscribe(email, "1")
            say(f"   {email} clicks 'unsubscribe' in a newsletter (ESP list 1)")
        for email in edited:
            if surname:
                _crm_update(crm_emulator, folder, email, {surname: "Renamed"})
                say(f"   {email} gets a new surname in the CRM")
        for email in opted_out_in_crm:
            if opt_out_field:
                _crm_update(crm_emulator, folder, email, {opt_out_field: "true"})
                say(f"   {email} is opted out by a sales rep in the CRM")
        exported = esp_emulator.export_unsubscribers()
        say(f"   the ESP drops its unsubscription export: {escape(_plain(exported))}\n")

        report["diff_sync"] = run("3. diff sync: unsubscribes into the CRM, CRM changes to the "
                                  "ESP", full=False)
        esp_emulator.import_files()

        crm_state = {c["email"].strip().lower(): c
                     for c in _crm_contacts(crm_name, crm_emulator, folder) if c.get("email")}
        esp_state = {c["email"].strip().lower(): c for c in esp_emulator.state()["contacts"]}
        rows = []
        for email in unsubscribers + edited + opted_out_in_crm:
            crm_side = crm_state.get(email, {})
            esp_side = esp_state.get(email, {}).get("lists", {})
            rows.append({
                "email": email,
                "what happened": ("unsubscribed at the ESP" if email in unsubscribers else
                                  "renamed in the CRM" if email in edited else
                                  "opted out in the CRM"),
                "crm_opted_out": bool(crm_side.get("opted_out") or str(
                    crm_side.get("fields", {}).get(opt_out_field or "", "")).lower() == "true"),
                "esp_list_1": esp_side.get("1", {}).get("status"),
                "esp_list_2": esp_side.get("2", {}).get("status"),
                "journal": [f"{e['list_id']}: {e['old_status']} → {e['new_status']} "
                            f"({e['source']})" for e in store.journal(email=email)
                            if e["old_status"] is not None],
            })
        report["contacts"] = rows
        if obj.as_json:
            obj.emit(report)
            return
        table = Table(title="4. where the touched contacts stand now")
        # an address is never cut: the other columns wrap instead
        table.add_column("email", no_wrap=True,
                         min_width=max([len(row["email"]) for row in rows] + [5]))
        for column in ("what happened", "CRM opted out", "ESP list 1", "ESP list 2",
                       "journal"):
            table.add_column(column)
        for row in rows:
            table.add_row(escape(row["email"]), row["what happened"],
                          "yes" if row["crm_opted_out"] else "no",
                          row["esp_list_1"] or "not on it", row["esp_list_2"] or "not on it",
                          escape("\n".join(row["journal"])))
        console.print(table)
        console.print("Every status change above is in the append-only journal "
                      "(`crmsync --config ... status`, or StateStore.journal()).")


def _plain(value: Any) -> str:
    """A report of an emulator's file exchange, in words rather than a Python dict."""
    if isinstance(value, dict):
        return "; ".join(f"{key} {_plain(item)}" for key, item in value.items()) or "nothing"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(item) for item in value) or "none"
    return "-" if value is None else str(value)


def _clean(settings: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: drop unset settings."""
    return {key: value for key, value in settings.items() if value is not None}

