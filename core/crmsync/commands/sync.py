"""``crmsync sync`` and ``crmsync status``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..cli import EXIT_ERROR, EXIT_FAILED, EXIT_USAGE, Context, cli
from ..errors import ConfigError, CrmsyncError, PluginError
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
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.pass_obj
def sync(obj: Context, full: bool, resend: bool, dry_run: bool) -> None:
    """Run one batch sync: ESP unsubscriptions into the CRM, CRM changes to the ESP.

    Exit 0 when every record went through, 1 when some failed (see the CSV report),
    2 on a usage or configuration error, 3 when the run could not go on (the file
    space or a vendor unreachable, ...: the message says what to do); with --json the
    error is also printed on stdout as {"status": "failed", "error", "exit_code"}.
    """
    try:
        stats = _sync(obj, full=full, resend=resend, dry_run=dry_run)
    except CrmsyncError as exc:
        if obj.as_json:  # the error object on stdout; the one-line message still on stderr
            code = EXIT_USAGE if isinstance(exc, ConfigError | PluginError) else EXIT_ERROR
            click.echo(json.dumps({"status": "failed", "error": str(exc), "exit_code": code},
                                  sort_keys=True))
        raise
    obj.emit(stats, lambda: render_stats(obj, stats))
    if stats["failed"] or stats["status"] == "stopped":
        sys.exit(EXIT_FAILED)


def _sync(obj: Context, *, full: bool, resend: bool, dry_run: bool) -> dict[str, Any]:
    config = obj.config()
    if config.crm is None or config.esp is None:
        raise ConfigError(f"{obj.config_path} needs both [crm] and [esp] to sync")
    store = open_store(config)
    with open_side(config, "crm") as crm, open_side(config, "esp") as esp:
        show = sys.stderr.isatty() and not obj.as_json
        with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                      TextColumn("{task.completed:>10,.0f}"), TimeElapsedColumn(),
                      disable=not show, transient=True) as progress:
            tasks: dict[str, Any] = {}

            def advance(phase: str, n: int) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(phase, total=None)
                progress.advance(tasks[phase], n)

            batch = build_batch(config, crm, esp, store, progress=advance)
            try:
                return batch.run(full=full, dry_run=dry_run, resend=resend).as_dict()
            finally:
                if batch.files is not None:
                    batch.files.close()
                store.close()


@cli.command()
@click.option("--runs", default=5, show_default=True, help="How many recent runs to show.")
@click.pass_obj
def status(obj: Context, runs: int) -> None:
    """Show the last runs, the cursors, pending work and dead letters."""
    config = obj.config()
    store = open_store(config)
    data: dict[str, Any] = {
        "runs": [{k: r[k] for k in ("id", "mode", "full", "dry_run", "status", "started_at",
                                    "finished_at")}
                 | {"stats": {k: r["stats"].get(k) for k in ("crm_read", "esp_written",
                                                             "crm_written", "failed")}}
                 for r in store.runs(runs)],
        "cursors": {name: c.model_dump(mode="json") for name, c in store.cursors().items()},
        "pending": store.count_pending(),
        "inbox": store.inbox_counts(),
        "dead_letters": len(store.dead_letters()),
        "lists": store.status_counts(),
    }
    store.close()

    def render() -> None:
        table = Table(title="recent runs")
        for column in ("run", "mode", "status", "started", "read", "esp", "crm", "failed"):
            table.add_column(column)
        for run in data["runs"]:
            s = run["stats"]
            table.add_row(run["id"], "dry-run" if run["dry_run"] else
                          ("full" if run["full"] else "diff"), run["status"],
                          str(run["started_at"])[:19], *(str(s.get(k) or 0) for k in (
                              "crm_read", "esp_written", "crm_written", "failed")))
        obj.console.print(table)
        for name, cursor in data["cursors"].items():
            obj.console.print(f"cursor {name}: {cursor['at']} {cursor['tie_id']}")
        obj.console.print(f"pending writes: {data['pending'] or 'none'}")
        obj.console.print(f"inbox: {data['inbox'] or 'empty'}; dead letters: "
                          f"{data['dead_letters']}")
        for list_id, counts in sorted(data["lists"].items()):
            obj.console.print(f"list {list_id}: " + ", ".join(
                f"{k} {v}" for k, v in sorted(counts.items())))

    obj.emit(data, render)
