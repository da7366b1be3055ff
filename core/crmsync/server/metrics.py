"""Prometheus metrics of ``crmsync serve``, in a registry of their own (one per app, so
several servers in one process, as in the tests, never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0, 3600.0)


class Metrics:
    """Events received / duplicate / rejected / applied / failed / dead, queue depth,
    apply latency (received to applied) and records polled."""

    def __init__(self, queue_depth: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("crmsync_events_received", "Events stored in the inbox.",
                                ["endpoint"], registry=r)
        self.duplicates = Counter("crmsync_events_duplicate",
                                  "Redelivered events acknowledged without storing again.",
                                  ["endpoint"], registry=r)
        self.ignored = Counter("crmsync_events_ignored",
                               "Authentic events that carried nothing to apply.",
                               ["endpoint"], registry=r)
        self.rejected = Counter("crmsync_events_rejected",
                                "Inbound calls refused (forged, garbled, too large).",
                                ["endpoint", "status"], registry=r)
        self.applied_total = Counter("crmsync_events_applied",
                                     "Events applied to the other side.", ["endpoint"],
                                     registry=r)
        self.failed_total = Counter("crmsync_events_failed",
                                    "Failed attempts at applying an event.", ["endpoint"],
                                    registry=r)
        self.dead_total = Counter("crmsync_events_dead", "Events moved to the dead letters.",
                                  ["endpoint"], registry=r)
        self.latency = Histogram("crmsync_event_apply_latency_seconds",
                                 "From an event's receipt to its application.", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.polled_total = Counter("crmsync_poll_records", "CRM records read by the poller.",
                                    registry=r)
        self.queue = Gauge("crmsync_inbox_queue_depth", "Events waiting in the inbox.",
                           registry=r)
        if queue_depth is not None:
            self.queue.set_function(queue_depth)

    # -- the worker's observer ------------------------------------------------------------
    def applied(self, endpoint: str, latency_s: float) -> None:
        self.applied_total.labels(endpoint).inc()
        self.latency.labels(endpoint).observe(latency_s)

    def failed(self, endpoint: str) -> None:
        self.failed_total.labels(endpoint).inc()

    def dead(self, endpoint: str) -> None:
        self.dead_total.labels(endpoint).inc()

    def polled(self, records: int) -> None:
        self.polled_total.inc(records)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
