"""One real-time service: the connectors, the state store, the worker, the app, and
running it under uvicorn with a graceful shutdown."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from ..actions import send, subscribe
from ..config import Config
from ..contract import Connector
from ..engine.realtime import RealtimeWorker
from ..hooks import Hooks
from ..metrics_file import StateCollector
from ..model import Change, SendResult, WriteResult
from ..state import StateStore
from .app import Inbox, StoreInbox, build_app
from .metrics import Metrics
from .security import FORM_SECRET_ENV, SEND_TOKEN_ENV, CsrfTokens, EndpointKeys, IpGuard

__all__ = ["Endpoint", "RealtimeService", "Servable", "ServerThread", "apply_inbox", "parse_listen",
           "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """An inbound endpoint: the side it belongs to, its connector and its secrets."""

    side: str
    connector: Connector
    keys: EndpointKeys


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` (or ``"[::1]:8080"``) as host and port."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        from ..errors import ConfigError

        raise ConfigError(f"[server] listen = {listen!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def apply_inbox(config: Config, store: StateStore) -> dict[str, int]:
    """Apply the inbox's pending events here and now, as a ``replay`` run (what
    ``crmsync replay`` and the console do with replayed dead letters when no
    ``crmsync serve`` runs to apply them)."""
    from ..runtime import build_hooks, open_side

    with open_side(config, "crm") as crm, open_side(config, "esp") as esp:
        worker = RealtimeWorker(config, crm, esp, store, hooks=build_hooks(config))
        worker.run_id = store.start_run("replay", full=False, dry_run=False)
        worker.drain()
        store.finish_run(worker.run_id, "succeeded", dict(worker.counts))
    return {"applied": worker.counts["applied"], "retrying": worker.counts["retried"],
            "dead": worker.counts["dead"], "still_pending": store.inbox_pending_count()}


class RealtimeService:
    """Everything ``crmsync serve`` runs, built from open connectors and a store.

    ``environ`` (default ``config.secrets()``: the environment, then the secrets file)
    holds the endpoint secrets. ``inbox`` replaces
    the durable inbox (the benchmark's floor only). ``worker=False`` receives without
    applying (another process applies). ``config_path``: the configuration file, for the
    console's resync.
    """

    def __init__(self, config: Config, crm: Connector, esp: Connector, store: StateStore, *,
                 hooks: Hooks | None = None, inbox: Inbox | None = None,
                 environ: Mapping[str, str] | None = None, worker: bool = True,
                 config_path: Path | None = None) -> None:
        env = config.secrets() if environ is None else environ
        self.config = config
        self.secrets = env
        self.config_path = config_path  # what the console's resync runs `crmsync sync` with
        self.crm = crm
        self.esp = esp
        self.store = store
        self.inbox = inbox or StoreInbox(store)
        self.hooks = hooks or Hooks()
        self.metrics = Metrics(queue_depth=store.inbox_pending_count)
        # the state gauges a batch run's metrics file has too (dead letters, API budget)
        self.metrics.registry.register(StateCollector(store, [crm, esp], inbox=False))
        self.lock = threading.RLock()
        self.worker = RealtimeWorker(config, crm, esp, store, hooks=self.hooks,
                                     observer=self.metrics, lock=self.lock)
        self.worker_expected = worker
        self.endpoints: dict[str, Endpoint] = {}
        for side, connector in (("esp", esp), ("crm", crm)):
            keys = EndpointKeys.from_env(side, env)
            if keys.secret:
                self.endpoints[side] = Endpoint(side, connector, keys)
            elif connector.capabilities.push_events:
                log.warning("no CRMSYNC_HOOK_SECRET_%s: the %s endpoint is off (set it to "
                            "receive %s events)", side.upper(), side, connector.name)
        caps = crm.capabilities
        if (config.server.poll == "auto" and "crm" not in self.endpoints
                and not self.worker.poll_enabled and (caps.incremental_read or caps.polling)):
            # the CRM could push, but its endpoint is off: its changes come by polling
            self.worker.poll_enabled = True
        self.ip_guard = IpGuard(config.server.allow_ips, config.server.trusted_proxies)
        self.csrf = CsrfTokens(env.get(FORM_SECRET_ENV) or None)
        self.send_token = env.get(SEND_TOKEN_ENV) or None
        self.accepting = True
        self.app = build_app(self)

    # -- what the app calls ---------------------------------------------------------------
    def store_event(self, side: str, key: str, changes: list[Change]) -> bool:
        stored = self.inbox.put(side, key, changes)
        if stored:
            self.worker.wake()
            try:
                self.hooks.event_received(side, changes)
            except Exception:  # the event is stored: a plugin's failure must not refuse it
                log.exception("a crmsync_event_received plugin failed")
        return stored

    def subscribe(self, email: str, lists: Sequence[str], confirm: bool = True,
                  source: str = "subscribe", groups: Sequence[str] = ()) -> list[WriteResult]:
        with self.lock:
            return subscribe(self.esp, email, lists, groups=groups, confirm=confirm,
                             config=self.config, store=self.store, source=source)

    def send(self, message_id: str, **kwargs: Any) -> SendResult:
        with self.lock:
            return send(self.esp, message_id, config=self.config, store=self.store,
                        source="POST /send", **kwargs)

    def storage_problem(self) -> str | None:
        """Why an event could not be stored now, or ``None``: an 8 KiB event is written
        to the inbox and rolled back (ready means able to store, not just to read)."""
        from sqlalchemy.exc import SQLAlchemyError

        from ..state import schema

        now = datetime.now(UTC)
        try:
            with self.store.engine.connect() as conn:
                transaction = conn.begin()
                try:
                    conn.execute(schema.inbox.insert().values(
                        endpoint="readyz", dedupe_key=f"probe:{uuid.uuid4().hex}",
                        contact="", payload={"probe": "x" * 8192}, received_at=now,
                        status="probe", attempts=0, next_attempt_at=now))
                finally:
                    transaction.rollback()
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            return f"cannot store events: {type(cause).__name__}: " + (
                str(cause).splitlines() or [""])[0]
        return None

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> RealtimeService:
        self.accepting = True
        if self.worker_expected:
            self.worker.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting events, let the worker finish the ones in hand."""
        self.accepting = False
        return self.worker.stop(timeout)

    def close(self) -> None:
        self.stop()
        for connector in (self.crm, self.esp):
            try:
                connector.close()
            except Exception:  # closing must not hide what happened before
                log.exception("closing %s failed", connector.name)


class Servable(Protocol):
    """What :func:`serve` and :class:`ServerThread` run: one pair's
    :class:`RealtimeService`, or several pairs' :class:`~crmsync.server.pairs.PairsService`."""

    @property
    def app(self) -> Any: ...

    @property
    def config(self) -> Config: ...

    def start(self) -> Any: ...

    def stop(self, timeout: float | None = None) -> bool: ...


def _uvicorn_config(service: Servable, host: str, port: int) -> uvicorn.Config:
    # proxy_headers off: uvicorn would otherwise take X-Forwarded-For from 127.0.0.1 as
    # the client address; the allow-list believes only [server] trusted_proxies.
    # log_config None: uvicorn's records go to the root logger, as JSON with --log-format.
    return uvicorn.Config(service.app, host=host, port=port, lifespan="off",
                          log_level="warning", log_config=None, access_log=False,
                          proxy_headers=False,
                          timeout_graceful_shutdown=int(
                              service.config.server.shutdown_timeout_s) or None)


def serve(service: Servable, host: str, port: int) -> None:
    """Run until SIGINT / SIGTERM: then stop accepting connections, finish the requests
    in progress, let the worker finish the events in hand and leave the rest in the
    inbox (a restart resumes them)."""
    server = _GracefulServer(_uvicorn_config(service, host, port), service)
    service.start()
    log.info("crmsync serve listening on http://%s:%d", host, port)
    try:
        server.run()
    finally:
        service.stop()


class _GracefulServer(uvicorn.Server):
    """Stops the worker once the HTTP side has shut down, before uvicorn re-raises the
    signal that stopped it (which would end the process before the worker finished)."""

    def __init__(self, config: uvicorn.Config, service: Servable) -> None:
        super().__init__(config)
        self._service = service

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            clean = self._service.stop()
            if clean:
                # a clean, requested stop: exit 0 rather than die of the signal
                self._captured_signals.clear()


class ServerThread:
    """``serve`` in a background thread (tests, benchmarks, an embedding application)."""

    def __init__(self, service: Servable, host: str = "127.0.0.1", port: int = 0) -> None:
        from ..emulator import free_port

        self.service = service
        self.host = host
        self.port = port or free_port()
        self._server = uvicorn.Server(_uvicorn_config(service, self.host, self.port))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self.service.start()
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        name=f"crmsync-serve-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"crmsync serve did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.service.stop()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
