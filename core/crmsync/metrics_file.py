"""A batch run's metrics, in Prometheus text format: a file for node_exporter's textfile
collector (``[metrics] textfile``) and/or a push to a Pushgateway (``[metrics]
pushgateway``), written when the run finishes (a built-in plugin on
``crmsync_run_finished``).

A cron job has no ``/metrics`` to scrape: these say what its last run did. The state
gauges (dead letters, inbox depth, API budget) carry the same names as on ``crmsync
serve``'s ``/metrics`` (:class:`StateCollector` serves both), so that one set of alert
rules (``docs/alerts.yml``) covers either deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .hooks import hookimpl

if TYPE_CHECKING:
    from .config import Config
    from .contract import Connector
    from .state import StateStore

__all__ = ["RUN_COUNTERS", "RUN_STATUSES", "RunMetrics", "StateCollector", "by_pair",
           "run_registry", "write_metrics"]

log = logging.getLogger(__name__)

# The counters of a run's summary (``sync --json``), one sample each.
RUN_COUNTERS = ("crm_read", "esp_unsubscribes_read", "esp_written", "crm_written",
                "skipped_unchanged", "consent_kept", "post_operations", "recovered", "failed")
RUN_STATUSES = ("succeeded", "partial", "stopped", "failed", "interrupted")
# A run that got to its end: "partial" means some records failed (see its report), not
# that the run did.
_SUCCESSFUL = ("succeeded", "partial")


def dead_letter_count(store: StateStore) -> int:
    from .state import schema as t

    with store.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(t.dead_letters).where(
            t.dead_letters.c.replayed.is_(False))).scalar() or 0)


class StateCollector(Collector):
    """Gauges read from the state store and the connectors at collection time."""

    def __init__(self, store: StateStore, connectors: Sequence[Connector] = (), *,
                 inbox: bool = True) -> None:
        self.store = store
        self.connectors = list(connectors)
        self.inbox = inbox  # the server's own registry has crmsync_inbox_queue_depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("crmsync_dead_letters",
                                "Events and writes given up on, not replayed yet.",
                                value=dead_letter_count(self.store))
        if self.inbox:
            yield GaugeMetricFamily("crmsync_inbox_queue_depth", "Events waiting in the inbox.",
                                    value=self.store.inbox_pending_count())
        used = GaugeMetricFamily("crmsync_api_budget_used",
                                 "API calls used in the vendor's budget window, as last seen.",
                                 labels=["connector"])
        limit = GaugeMetricFamily("crmsync_api_budget_limit",
                                  "The vendor's API call budget for its window.",
                                  labels=["connector"])
        ratio = GaugeMetricFamily("crmsync_api_budget_used_ratio",
                                  "Share of the vendor's API budget used (0 to 1).",
                                  labels=["connector"])
        for connector in self.connectors:
            budget = connector.api_budget()
            if budget is None:
                continue
            spent, allowed = budget
            used.add_metric([connector.name], spent)
            limit.add_metric([connector.name], allowed)
            if allowed:
                ratio.add_metric([connector.name], spent / allowed)
        yield used
        yield limit
        yield ratio


def run_registry(stats: dict[str, Any], store: StateStore,
                 connectors: Sequence[Connector] = ()) -> CollectorRegistry:
    """The metrics of one finished batch run."""
    registry = CollectorRegistry()
    status = Gauge("crmsync_batch_run_status",
                   "1 for the status the last batch run ended with, 0 for the others.",
                   ["status"], registry=registry)
    for name in RUN_STATUSES:
        status.labels(name).set(1 if stats.get("status") == name else 0)
    Gauge("crmsync_batch_run_failed", "1 when the last batch run failed (or was stopped by "
          "a signal), else 0.", registry=registry).set(
        1 if stats.get("status") in ("failed", "interrupted") else 0)
    records = Gauge("crmsync_batch_records", "What the last batch run counted, by kind.",
                    ["what"], registry=registry)
    for name in RUN_COUNTERS:
        records.labels(name).set(float(stats.get(name) or 0))
    Gauge("crmsync_batch_run_duration_seconds", "How long the last batch run took.",
          registry=registry).set(float(stats.get("duration_s") or 0))
    Gauge("crmsync_batch_last_run_timestamp_seconds", "When the last batch run ended.",
          registry=registry).set(datetime.now(UTC).timestamp())
    success = Gauge("crmsync_batch_last_success_timestamp_seconds",
                    "When the last batch run that got to its end (succeeded or partial) "
                    "ended; 0 if none did.", registry=registry)
    success.set(_last_success(store, stats))
    registry.register(StateCollector(store, connectors))
    return registry


def _last_success(store: StateStore, stats: dict[str, Any]) -> float:
    if stats.get("status") in _SUCCESSFUL:
        return datetime.now(UTC).timestamp()
    from .model import utc
    from .state import schema as t

    with store.begin() as conn:
        at = conn.execute(select(func.max(t.runs.c.finished_at)).where(
            t.runs.c.mode == "batch", t.runs.c.dry_run.is_(False),
            t.runs.c.status.in_(_SUCCESSFUL))).scalar()
    return utc(at).timestamp() if at is not None else 0.0


class _ByPair(Collector):
    """Several registries' metrics as one, each sample labelled with its pair."""

    def __init__(self, registries: dict[str, CollectorRegistry]) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Any]:
        from prometheus_client import Metric

        merged: dict[str, Metric] = {}
        for pair, registry in self.registries.items():
            for family in registry.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
                into.samples.extend(sample._replace(labels={**sample.labels, "pair": pair})
                                    for sample in family.samples)
        yield from merged.values()


def by_pair(registries: dict[str, CollectorRegistry]) -> CollectorRegistry:
    """One registry of every pair's metrics, each sample with a ``pair`` label (a
    many-pairs deployment's ``/metrics``; one pair's batch run, so that its textfile or
    push does not collide with another pair's)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ByPair(registries))
    return registry


def write_metrics(config: Config, registry: CollectorRegistry) -> list[str]:
    """Write ``registry`` where ``[metrics]`` says; return where it went. A named pair's
    samples carry its ``pair`` label, and its push its own grouping key."""
    from prometheus_client import push_to_gateway, write_to_textfile

    settings = config.metrics
    pair = config.pair_name
    grouping = {}
    if pair != "default":
        registry = by_pair({pair: registry})
        grouping = {"pair": pair}
    done = []
    if settings.textfile:
        path = config.path(settings.textfile)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), registry)  # a temporary file renamed: never half read
        done.append(str(path))
    if settings.pushgateway:
        push_to_gateway(settings.pushgateway, job=settings.job, registry=registry,
                        grouping_key=grouping, timeout=10)
        done.append(settings.pushgateway)
    return done


class RunMetrics:
    """A built-in plugin: a batch run's metrics written when it finishes."""

    def __init__(self, config: Config, store: StateStore | None = None, *,
                 connectors: Sequence[Connector] = ()) -> None:
        self.config = config
        self.store = store
        self.connectors = list(connectors)
        self.modes: dict[str, str] = {}

    @property
    def wanted(self) -> bool:
        return bool(self.config.metrics.textfile or self.config.metrics.pushgateway)

    @hookimpl
    def crmsync_run_started(self, run_id: str, mode: str, full: bool) -> None:
        self.modes[run_id] = mode

    @hookimpl
    def crmsync_run_finished(self, run_id: str, stats: dict[str, Any]) -> None:
        mode = self.modes.pop(run_id, stats.get("mode"))
        if mode != "batch" or stats.get("dry_run") or not self.wanted:
            return
        try:
            store = self.store
            if store is None:
                from .state import StateStore

                store = StateStore(self.config.state_url(), schema=self.config.state_schema())
            write_metrics(self.config, run_registry(stats, store, self.connectors))
        except Exception as exc:  # metrics must never turn a finished run into a failed one
            log.error("cannot write the run's metrics ([metrics]): %s", exc)
