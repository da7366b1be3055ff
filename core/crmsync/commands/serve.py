"""``crmsync serve``, ``crmsync replay``, ``crmsync subscribe`` and ``crmsync send``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..cli import EXIT_FAILED, Context, cli, email_param
from ..config import Config
from ..errors import ConfigError
from ..runtime import build_hooks, open_side, open_store
from .sync import serving_run


def _both_sides(config: Config, obj: Context, what: str) -> None:
    if config.crm is None or config.esp is None:
        raise ConfigError(f"{obj.config_path} needs both [crm] and [esp] to {what}")


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: [server] listen).")
@click.option("--port", "-p", type=int, default=None,
              help="Port to listen on (default: [server] listen).")
@click.option("--no-worker", is_flag=True,
              help="Receive only (PostgreSQL state): store each event with its job and "
                   "acknowledge; `crmsync worker` processes apply them.")
@click.pass_obj
def serve(obj: Context, host: str | None, port: int | None, no_worker: bool) -> None:
    """Run the real-time mode: webhooks both ways, workers, polling, the form, metrics,
    and the operator's console at /admin.

    Endpoint secrets come from CRMSYNC_HOOK_SECRET_ESP / CRMSYNC_HOOK_SECRET_CRM; the
    console exists when CRMSYNC_CONSOLE_PASSWORD_HASH (or _PASSWORD) is set.
    SIGTERM or Ctrl-C stops accepting, finishes the events in hand and keeps the rest
    in the inbox for the next start. With --no-worker (state on PostgreSQL) it only
    receives, as many as you like behind a load balancer; `crmsync worker` applies.
    With --pairs DIR it serves every pair at /hooks/<pair>/esp and /hooks/<pair>/crm,
    each with its own secrets (CRMSYNC_<PAIR>_HOOK_SECRET_ESP), state and worker.
    """
    from ..server import RealtimeService, parse_listen
    from ..server import serve as run

    pairs = obj.pairs()
    if pairs is not None:
        _serve_pairs(obj, pairs, host, port, no_worker)
        return
    config = obj.config()
    _both_sides(config, obj, "serve")
    default_host, default_port = parse_listen(config.server.listen)
    where = (host or default_host, default_port if port is None else port)
    inbox = None
    if no_worker:
        from ..scale import require_postgresql

        require_postgresql(config, "crmsync serve --no-worker")
    _check_free(*where)
    store = open_store(config)
    if no_worker:
        from ..scale import receiver_inbox

        inbox = receiver_inbox(config, store)
    crm = open_side(config, "crm")
    esp = open_side(config, "esp")
    service = RealtimeService(config, crm, esp, store, hooks=build_hooks(config),
                              config_path=obj.config_path.resolve(), inbox=inbox,
                              worker=not no_worker)
    endpoints = ", ".join(f"/hooks/{side}" for side in service.endpoints) or "none"
    polling = f"polling {crm.name} every {config.server.poll_interval_s:g}s" \
        if service.worker.poll_enabled else "not polling"
    if no_worker:
        polling = "receiving only: `crmsync worker` applies"
    console = "console at /admin" if any(
        getattr(route, "path", "") == "/admin" for route in service.app.routes) \
        else "no console (set CRMSYNC_CONSOLE_PASSWORD_HASH)"
    click.echo(f"crmsync serve: http://{where[0]}:{where[1]} (endpoints: {endpoints}; "
               f"{polling}; {console}); SIGTERM or Ctrl-C stops it", err=True)
    try:
        run(service, *where)
    finally:
        service.close()
        store.close()


def _serve_pairs(obj: Context, pairs: dict[str, Config], host: str | None,
                 port: int | None, no_worker: bool) -> None:
    """``serve`` for every pair of ``--pairs`` (or the one of ``--pair``): each its own
    service, routed by ``/hooks/<pair>/...`` (crmsync.server.pairs)."""
    import contextlib

    from ..server import RealtimeService, parse_listen
    from ..server import serve as run
    from ..server.pairs import PairsService

    first = next(iter(pairs.values()))
    for name, config in pairs.items():
        _both_sides(config, obj, f"serve (pair {name})")
        if no_worker:
            from ..scale import require_postgresql

            require_postgresql(config, f"crmsync serve --no-worker (pair {name})")
    default_host, default_port = parse_listen(first.server.listen)
    where = (host or default_host, default_port if port is None else port)
    _check_free(*where)
    services: dict[str, RealtimeService] = {}
    with contextlib.ExitStack() as stack:
        for name, config in pairs.items():
            store = open_store(config)
            stack.callback(store.close)
            inbox = None
            if no_worker:
                from ..scale import receiver_inbox

                inbox = receiver_inbox(config, store)
            crm = stack.enter_context(open_side(config, "crm"))
            esp = stack.enter_context(open_side(config, "esp"))
            services[name] = RealtimeService(
                config, crm, esp, store, hooks=build_hooks(config), inbox=inbox,
                worker=not no_worker, config_path=Path(config.base_dir) / "crmsync.toml")
        service = PairsService(services)
        endpoints = ", ".join(f"/hooks/{name}/{side}" for name, one in services.items()
                              for side in one.endpoints) or "none"
        doing = "receiving only: `crmsync worker` applies" if no_worker else \
            "each pair applies its own events"
        click.echo(f"crmsync serve: http://{where[0]}:{where[1]} ({len(services)} pairs: "
                   f"{', '.join(services)}; endpoints: {endpoints}; {doing}); SIGTERM or "
                   "Ctrl-C stops it", err=True)
        try:
            run(service, *where)
        finally:
            service.close()


@cli.command()
@click.option("--stalled-after", type=float, default=30.0, show_default=True,
              help="Seconds without a heartbeat after which a worker counts as dead and "
                   "its event goes back to the queue (keep it above a slow vendor call).")
@click.option("--name", default=None, help="This worker's name in procrastinate's tables.")
@click.pass_obj
def worker(obj: Context, stalled_after: float, name: str | None) -> None:
    """Apply real-time events from the shared inbox (state on PostgreSQL).

    Run as many as you like, on any machines: a contact's events are applied one at a
    time, oldest first, across all of them; a worker killed at any moment loses nothing
    and its event is applied by another. Receivers: `crmsync serve --no-worker`.
    With --pairs DIR it applies every pair's events, each pair in its own queue and
    loop (one pair's slow vendor holds up only that pair). SIGTERM or Ctrl-C finishes
    the events in hand.
    """
    from ..scale import require_postgresql, run_worker

    pairs = obj.pairs() or {"default": obj.config()}
    for pair, config in pairs.items():
        _both_sides(config, obj, "work" if pair == "default" else f"work (pair {pair})")
        require_postgresql(config, "crmsync worker")
    where = next(iter(pairs.values())).state_url().split('@')[-1]
    which = "" if list(pairs) == ["default"] else f" for pairs {', '.join(pairs)}"
    click.echo(f"crmsync worker: applying the inbox of {where}{which}; "
               "SIGTERM or Ctrl-C stops it", err=True)
    counts = run_worker(pairs, stalled_after_s=stalled_after, name=name)
    click.echo(f"applied {counts['applied']}, retried {counts['retried']}, "
               f"dead {counts['dead']}", err=True)


@cli.command()
@click.option("--next", "count", type=int, default=3, show_default=True,
              help="How many upcoming runs to show for each task.")
@click.pass_obj
def schedule(obj: Context, count: int) -> None:
    """Show what runs when: the periodic tasks `crmsync worker` processes start once per
    tick however many run (PostgreSQL; [schedule] in crmsync.toml), or, on SQLite,
    what the embedded default does instead."""
    from ..engine.realtime import should_poll
    from ..scale import schedule as scheduled

    pairs = obj.pairs() or {"default": obj.config()}
    found: dict[str, dict[str, Any]] = {}
    for pair, config in pairs.items():
        _both_sides(config, obj, "schedule runs")
        with open_side(config, "crm") as crm:
            polls = should_poll(config, crm)
        on_postgres = config.state_url().startswith("postgresql")
        items = scheduled(config, crm_polls=polls) if on_postgres else []
        found[pair] = {
            "runner": "crmsync worker" if on_postgres else "embedded",
            "tasks": [{"task": item.task, "cron": item.cron, "what": item.what,
                       "next": [t.isoformat() for t in item.next_runs(count)]}
                      for item in items],
            "polls": f"`crmsync serve` polls {crm.name} every "
                     f"{config.server.poll_interval_s:g}s" if polls else ""}
    data = found["default"] if list(found) == ["default"] else {"pairs": found}

    def render_one(pair: str, item: dict[str, Any]) -> None:
        named = "" if pair == "default" else f"pair {pair}: "
        if item["runner"] == "embedded":
            click.echo(f"{named}state on SQLite: nothing is scheduled by crmsync; run "
                       "`crmsync sync` from cron or a systemd timer (docs/batch.md)"
                       + (f"; {item['polls']}" if item["polls"] else ""))
            return
        if not item["tasks"]:
            click.echo(f'{named}nothing scheduled: set [schedule] batch = "0 2 * * *" for a '
                       "nightly run (polling is off: [schedule] poll, [server] poll)")
            return
        click.echo(f"{named}run by `crmsync worker` (once per tick across all workers), "
                   "times UTC:")
        for row in item["tasks"]:
            upcoming = ", ".join(t[:19].replace("T", " ") for t in row["next"])
            click.echo(f"{row['task']:<14} {row['cron']:<16} next {upcoming}  "
                       f"({row['what']})")

    def render() -> None:
        for pair, item in found.items():
            render_one(pair, item)

    obj.emit(data, render)


def _check_free(host: str, port: int) -> None:
    """Fail before saying anything when the address is taken (uvicorn would only log
    it after the banner)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}: stop "
                              "what uses it, or pick another --port / [server] listen"
                              ) from None


@cli.command()
@click.option("--dead-letters", is_flag=True, default=True,
              help="Put every dead event back in the inbox and apply it again (the "
                   "default: dead letters are what replay replays).")
@click.option("--queue-only", is_flag=True,
              help="Only put them back: a running `crmsync serve` applies them.")
@click.option("--apply", "force_apply", is_flag=True,
              help="Apply them here even though a `crmsync serve` seems to be running.")
@click.pass_obj
def replay(obj: Context, dead_letters: bool, queue_only: bool, force_apply: bool) -> None:
    """Re-run the dead letters (events that failed every attempt).

    They are put back in the inbox and applied here and now, unless --queue-only or a
    `crmsync serve` is running (it applies them: one process applies events).
    """
    from ..server.service import apply_inbox

    config = obj.config()
    store = open_store(config)
    try:
        # the latest real-time run tells whether a server runs (one killed with SIGKILL
        # has left its lock: it is not running)
        serving = serving_run(store)
        count = store.replay_dead_letters()
        result: dict[str, object] = {"requeued": count}
        if serving and not queue_only and not force_apply:
            queue_only = True
            result["left_to"] = f"crmsync serve (run {serving['id']})"
        if not queue_only and count:
            _both_sides(config, obj, "replay")
            result |= apply_inbox(config, store)
    finally:
        store.close()

    def render() -> None:
        obj.console.print(f"put {count} dead letter(s) back in the inbox")
        if "left_to" in result:
            obj.console.print(f"a {result['left_to']} seems to be running: it applies them "
                              "(if it is not, pass --apply)")
        if "applied" in result:
            obj.console.print(f"applied {result['applied']}, waiting for a retry "
                              f"{result['retrying']}, dead again {result['dead']}")

    obj.emit(result, render)
    if result.get("dead"):
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("email", callback=email_param)
@click.option("--list", "-l", "lists", multiple=True, required=True, metavar="ID",
              help="An ESP list id of [[lists]] (repeat for several).")
@click.option("--group", "-g", "groups", multiple=True, metavar="G", help="A group (repeatable).")
@click.option("--confirm/--no-confirm", default=True, show_default=True,
              help="Send the ESP's confirmation email (double opt-in).")
@click.pass_obj
def subscribe(obj: Context, email: str, lists: tuple[str, ...], groups: tuple[str, ...],
              confirm: bool) -> None:
    """Subscribe EMAIL to several lists at once (pending until confirmed by default)."""
    from ..actions import subscribe as do_subscribe

    config = obj.config()
    store = open_store(config)
    try:
        with open_side(config, "esp") as esp:
            results = do_subscribe(esp, email, lists, groups=groups, confirm=confirm,
                                   config=config, store=store, source="command")
    finally:
        store.close()
    data = [{"list": list_id, "ok": r.ok, "error": r.error}
            for list_id, r in zip(dict.fromkeys(lists), results, strict=False)]

    def render() -> None:
        state = "pending (confirmation email sent)" if confirm else "subscribed"
        for row in data:
            mark = state if row["ok"] else f"[red]failed[/red]: {row['error']}"
            obj.console.print(f"list {row['list']}: {mark}")

    obj.emit({"email": email, "results": data}, render)
    if not all(row["ok"] for row in data):
        sys.exit(EXIT_FAILED)


@cli.command()
@click.option("--message", "-m", "message_id", required=True, metavar="ID",
              help="The ESP's message id.")
@click.option("--to", metavar="EMAIL", callback=email_param, help="Send to one address.")
@click.option("--list", "-l", "list_id", metavar="ID", help="Send to a list.")
@click.option("--group", "-g", "group_id", metavar="ID", help="Only this group of the list.")
@click.option("--transactional", is_flag=True,
              help="A message the person needs whatever their marketing consent (a receipt, "
                   "a password reset): it may go to an address unsubscribed from every list, "
                   "and the journal records it.")
@click.pass_obj
def send(obj: Context, message_id: str, to: str | None, list_id: str | None,
         group_id: str | None, transactional: bool) -> None:
    """Send an existing ESP message to one address (--to) or a list (--list [--group]).

    An address unsubscribed from every list is refused unless --transactional.
    """
    from ..actions import send as do_send

    config = obj.config()
    store = open_store(config)
    try:
        with open_side(config, "esp") as esp:
            result = do_send(esp, message_id, to=to, list_id=list_id, group_id=group_id,
                             transactional=transactional, config=config, store=store,
                             source="command")
    finally:
        store.close()
    obj.emit(result, lambda: obj.console.print(
        f"message {result.message_id}: {'sent' if result.ok else 'FAILED'} to "
        f"{result.recipients} recipient(s) {result.detail}".rstrip(), highlight=False,
        markup=False))
    if not result.ok:
        sys.exit(EXIT_FAILED)
