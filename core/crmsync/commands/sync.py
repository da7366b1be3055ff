"""``crmsync sync`` and ``crmsync status``."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..cli import EXIT_ERROR, EXIT_FAILED, EXIT_USAGE, Context, cli
from ..config import Config
from ..engine.plan import ContactDecision
from ..errors import ConfigError, CrmsyncError, PluginError, StateBusy
from ..progress import Mode, RunProgress
from ..runtime import build_batch, open_side, open_store


def render_stats(obj: Context, stats: dict[str, Any]) -> None:
    title = "dry run: the plan (nothing written)" if stats["dry_run"] else "sync summary"
    table = Table(title=f"{title} — run {stats['run_id']}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("crm_read", "esp_unsubscribes_read", "esp_written", "crm_written",
                "skipped_unchanged", "consent_kept", "post_operations", "recovered", "failed"):
        table.add_row(key.replace("_", " "), str(stats[key]))
    table.add_row("duration (s)", f"{stats['duration_s']:.2f}")
    obj.console.print(table)
    if stats["plan"]:
        plan = Table(title="per list")
        for column in ("list", "side", "changes"):
            plan.add_column(column)
        for list_id, sides in sorted(stats["plan"].items()):
            for side, counts in sorted(sides.items()):
                changes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                plan.add_row(list_id, side, changes)
        obj.console.print(plan)
    for name in stats["files_uploaded"]:
        obj.console.print(f"uploaded {name}")
    if stats["report"]:
        obj.console.print(f"[yellow]failed records:[/yellow] {escape(stats['report'])}")
    if stats["status"] == "stopped":
        obj.console.print(f"[yellow]stopped, resumable:[/yellow] "
                          f"{escape(str(stats['stopped_reason']))}")


@cli.command()
@click.option("--full", is_flag=True,
              help="Read every CRM contact, not just the changes; changed ones go out.")
@click.option("--resend", is_flag=True,
              help="Send again, changed or not, every subscribed contact's lists and fields "
                   "and every unsubscribe crmsync knows (repairs an ESP that lost data). "
                   "Pending subscriptions are not re-sent.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (with -v, each contact's); write nothing anywhere: no "
                   "state file, run, cursor, import file or report.")
@click.option("--list", "lists", multiple=True, metavar="ESP_LIST",
              help="Send for this ESP list only (repeatable): with --full or --resend, "
                   "repairs one list. The ESP's unsubscriptions of every list are still "
                   "read first; the CRM cursor does not move.")
@click.option("--metrics-file", type=click.Path(dir_okay=False), default=None,
              help="Write the run's metrics there, in Prometheus text format (for "
                   "node_exporter's textfile collector); default: [metrics] textfile.")
@click.option("--pushgateway", metavar="URL", default=None,
              help="Push the run's metrics to this Pushgateway; default: [metrics] "
                   "pushgateway.")
@click.pass_obj
def sync(obj: Context, full: bool, resend: bool, dry_run: bool, lists: tuple[str, ...],
         metrics_file: str | None,
         pushgateway: str | None) -> None:
    """Run one batch sync: ESP unsubscriptions into the CRM, CRM changes to the ESP.

    Exit 0 when every record went through, 1 when some failed (see the CSV report),
    2 on a usage or configuration error, 3 when the run could not go on (the file
    space or a vendor unreachable, ...: the message says what to do); with --json the
    error is also printed on stdout as {"status": "failed", "error", "exit_code"}.
    """
    config = obj.config()
    if config.crm is None or config.esp is None:
        raise ConfigError(f"{obj.config_path} needs both [crm] and [esp] to sync")
    if metrics_file or pushgateway:
        config = _with_metrics(config, metrics_file, pushgateway)
    scratch = contextlib.ExitStack()
    if dry_run:
        config = _scratch_state(config, scratch)
    with scratch:
        try:
            _sync(obj, config, full=full, resend=resend, dry_run=dry_run,
                  lists=list(lists) or None)
        except CrmsyncError as exc:
            if obj.as_json:  # the error object on stdout; the one-line message on stderr
                code = EXIT_USAGE if isinstance(exc, ConfigError | PluginError) else EXIT_ERROR
                click.echo(json.dumps({"status": "failed", "error": str(exc),
                                       "exit_code": code}, sort_keys=True))
            raise


def _with_metrics(config: Config, textfile: str | None, pushgateway: str | None) -> Config:
    from pydantic import ValidationError

    from ..config import MetricsConfig
    from ..contract import format_validation_error

    values = config.metrics.model_dump()
    if textfile:
        values["textfile"] = str(Path(textfile).resolve())
    if pushgateway:
        values["pushgateway"] = pushgateway
    try:
        metrics = MetricsConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="--pushgateway").splitlines()[0]
                          .replace("--pushgateway.pushgateway", "--pushgateway")) from None
    return config.model_copy(update={"metrics": metrics})


def _scratch_state(config: Config, stack: contextlib.ExitStack) -> Config:
    """A dry run writes nothing: on SQLite it plans against a copy of the state file
    (no file created, no run row); PostgreSQL keeps its rolled-back transaction."""
    url = config.state_url()
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return config
    source = Path(url[len("sqlite:///"):])
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crmsync-dry-")))
    copy = folder / "state.db"
    if source.exists():
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, \
                sqlite3.connect(copy) as dst:
            src.backup(dst)
    state = config.state.model_copy(update={"url": f"sqlite:///{copy}"})
    return config.model_copy(update={"state": state})


def _print_plan(side: str, decision: ContactDecision) -> None:
    """One line per contact a dry run would change: ``plan: <side> <email> <what>``."""
    what = [f"{e.list_id}: {e.new_status} "
            f"({'new' if e.old_status is None else 'was ' + e.old_status})"
            for e in decision.update.journal]
    changed = {e.list_id for e in decision.update.journal}
    send = decision.send
    if send is not None:
        what += [f"{list_id}: {sub.status.value} (update)"
                 for list_id, sub in send.subscriptions.items() if list_id not in changed]
        if send.previous_email:
            what.append(f"address was {send.previous_email}")
        if send.fields and not send.subscriptions:
            what.append("fields")
    if not what:
        what.append("state only")
    click.echo(f"plan: {side} {decision.email} {', '.join(what)}")


def _sync(obj: Context, config: Config, *, full: bool, resend: bool, dry_run: bool,
          lists: list[str] | None = None) -> None:
    store = open_store(config)
    assert config.crm is not None and config.esp is not None
    what = (f"{'dry run' if dry_run else 'sync'} {'full' if full else 'diff'}: "
            f"{config.esp.connector} unsubscriptions, then {config.crm.connector} "
            f"{'contacts' if full else 'changes'} to {config.esp.connector}")
    mode: Mode = ("none" if obj.as_json else "log" if obj.json_logs
                  else "bar" if sys.stderr.isatty() else "lines")
    reads_all = full or resend or store.get_cursor("crm") is None
    with open_side(config, "crm") as crm, open_side(config, "esp") as esp:
        # the CRM's own count, for a total and an ETA: only a full read has one
        progress = RunProgress(what, mode, total=crm.full_read_count if reads_all else None)
        progress.say(what)
        if not dry_run and not obj.as_json:
            try:
                with store.exclusive("batch"):
                    pass
            except StateBusy:
                message = ("waiting up to 120 s for another crmsync run on this state store "
                           "to finish")
                if mode == "bar":
                    click.echo(f"crmsync: {message}", err=True)
                else:
                    progress.say(message)
        with progress:
            observer = (_print_plan if dry_run and obj.verbose and not obj.as_json
                        else None)
            batch = build_batch(config, crm, esp, store, progress=progress,
                                observer=observer)
            try:
                stats = batch.run(full=full, dry_run=dry_run, resend=resend,
                                  lists=lists).as_dict()
            finally:
                if batch.files is not None:
                    batch.files.close()
                store.close()
    progress.say(f"{stats['status']}: {stats['crm_read']:,} read, {stats['esp_written']:,} "
                 f"to the ESP, {stats['crm_written']:,} to the CRM, {stats['failed']:,} failed")
    obj.emit(stats, lambda: render_stats(obj, stats))
    if stats["failed"] or stats["status"] == "stopped":
        sys.exit(EXIT_FAILED)


@cli.command()
@click.option("--runs", default=5, show_default=True, help="How many recent runs to show.")
@click.pass_obj
def status(obj: Context, runs: int) -> None:
    """Show the last runs, the cursors, pending work and dead letters.

    With --pairs (and no --pair): one line per pair — its last run, its inbox and
    dead letters, its pending writes; --pair NAME shows that pair in full.
    """
    pairs = obj.pairs() if obj.pair is None else None
    if pairs is not None:
        _pairs_status(obj, {name: _status_data(config, 1) for name, config in pairs.items()})
        return
    config = obj.config()
    data = _status_data(config, runs)

    def render() -> None:
        _render_status(obj, data)

    obj.emit(data, render)


def _pairs_status(obj: Context, pairs: dict[str, dict[str, Any]]) -> None:
    def render() -> None:
        table = Table(title="pairs")
        for column in ("pair", "last run", "inbox", "dead", "pending"):
            table.add_column(column, no_wrap=True)
        for name, data in pairs.items():
            last = data["runs"][0] if data["runs"] else None
            run = (f"{_mode(last)} {last['status']} {str(last['started_at'])[:16]}"
                   if last else "never run")
            table.add_row(name, run, str(data["inbox"].get("pending", 0)),
                          str(data["dead_letters"]), str(sum(data["pending"].values())))
        obj.console.print(table)
        obj.console.print("one pair in full: crmsync --pairs DIR --pair NAME status")

    obj.emit({"pairs": pairs}, render)


def _status_data(config: Any, runs: int) -> dict[str, Any]:
    store = open_store(config)
    try:
        recent = store.runs(runs)
        return {
            "pair": config.pair_name,
            "runs": [{k: r[k] for k in ("id", "mode", "full", "dry_run", "started_at",
                                        "finished_at")}
                     | {"status": live_status(store, r, recent)}
                     | {"stats": {k: r["stats"].get(k) for k in ("crm_read", "esp_written",
                                                                 "crm_written", "failed")}}
                     for r in recent],
            "cursors": {name: c.model_dump(mode="json")
                        for name, c in store.cursors().items()},
            "pending": store.count_pending(),
            "inbox": store.inbox_counts(),
            "dead_letters": len(store.dead_letters()),
            "lists": store.status_counts(),
        }
    finally:
        store.close()


def _render_status(obj: Context, data: dict[str, Any]) -> None:
    table = Table(title="recent runs" + (f" of pair {data['pair']}"
                                         if data["pair"] != "default" else ""))
    width = max([len(run["id"]) for run in data["runs"]] + [3])
    table.add_column("run", no_wrap=True, min_width=width)
    table.add_column("mode", no_wrap=True, min_width=9)
    table.add_column("status", no_wrap=True, min_width=9)
    for column in ("started", "read", "esp", "crm", "failed"):
        table.add_column(column)
    for run in data["runs"]:
        s = run["stats"]
        table.add_row(run["id"], _mode(run), run["status"],
                      str(run["started_at"])[:19], *(str(s.get(k) or 0) for k in (
                          "crm_read", "esp_written", "crm_written", "failed")))
    obj.console.print(table)
    if any(run["status"] == "died" for run in data["runs"]):
        obj.console.print("died: its process ended without finishing the run (killed?); "
                          "a new run resumes what it left")
    for name, cursor in data["cursors"].items():
        obj.console.print(f"cursor {name}: {cursor['at']} {cursor['tie_id']}")
    pending = data["pending"]
    obj.console.print("pending writes: " + (", ".join(
        f"{side} {count}" for side, count in sorted(pending.items())) or "none"))
    inbox = data["inbox"]
    obj.console.print("inbox: " + (", ".join(
        f"{state} {count}" for state, count in sorted(inbox.items())) or "empty")
        + f"; dead letters: {data['dead_letters']}")
    for list_id, counts in sorted(data["lists"].items()):
        obj.console.print(f"list {list_id}: " + ", ".join(
            f"{k} {v}" for k, v in sorted(counts.items())))


def _mode(run: dict[str, Any]) -> str:
    if run["dry_run"]:
        return "dry-run"
    if run["mode"] == "realtime":
        return "real-time"
    if run["mode"] == "batch":
        return "full" if run["full"] else "diff"
    return str(run["mode"])


def live_status(store: Any, run: dict[str, Any], recent: list[dict[str, Any]]) -> str:
    """A run still "running" whose process is gone (SIGKILL, a power cut) says so: the
    lock its process holds while it lives is free, or a later run of its kind took over."""
    if run["status"] != "running":
        return str(run["status"])
    lock = "serve" if run["mode"] == "realtime" else "batch"
    later = [r for r in recent if r["mode"] == run["mode"] and r["started_at"] >
             run["started_at"]]
    if run["mode"] == "realtime" and later:
        return "died"  # a later server took over
    try:
        with store.exclusive(lock):
            return "died"  # its process ended without finishing it (killed?)
    except StateBusy:
        return "running"


def serving_run(store: Any) -> dict[str, Any] | None:
    """The run of the ``crmsync serve`` running on this state store, or ``None`` (the
    latest real-time run tells; one killed with SIGKILL has left its lock)."""
    recent = store.runs(50)
    latest = next((run for run in recent if run["mode"] == "realtime"), None)
    if latest is not None and live_status(store, latest, recent) == "running":
        return dict(latest)
    return None
