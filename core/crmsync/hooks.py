"""Extension points (pluggy) for the 1:N cases: post-operations, record transforms,
lifecycle events.

The host owns one marker pair (``hookspec`` / ``hookimpl``), the specs below, and one
function that builds the manager (:func:`build_plugin_manager`). Built-in behaviour,
such as the configured post-operation rules, registers through the same path as
third-party plugins (entry-point group ``crmsync.plugins``). :class:`Hooks` wraps
``pm.hook`` in typed methods; ``check_pending()`` makes a misspelled hook fail loudly.

A plugin::

    from crmsync.hooks import hookimpl

    @hookimpl
    def crmsync_post_operation(change, context):
        if "2" in change.subscriptions and change.subscriptions["2"].status == "unsubscribed":
            return [...]  # follow-up changes
        return []
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy

from .errors import PluginError
from .model import Change, Contact

__all__ = [
    "PLUGINS",
    "Hooks",
    "PostOpContext",
    "build_plugin_manager",
    "hookimpl",
    "hookspec",
]

PROJECT = "crmsync"
PLUGINS = "crmsync.plugins"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Direction = Literal["crm_to_esp", "esp_to_crm"]


@dataclass(frozen=True)
class PostOpContext:
    """What a post-operation knows: where the change was applied and in which run."""

    applied_to: Literal["crm", "esp"]
    mode: Literal["batch", "realtime"]
    run_id: str = ""
    all_lists: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class HookSpecs:
    """The hook specifications. Every hook is documented (a test checks it)."""

    @hookspec
    def crmsync_post_operation(self, change: Change, context: PostOpContext) -> list[Change]:
        """Called after a subscription change was applied; return follow-up changes
        (for the same side) such as unsubscribing related lists. Follow-ups go through
        the consent policy and the journal like any change."""
        raise NotImplementedError

    @hookspec
    def crmsync_transform_contact(self, contact: Contact, direction: Direction) -> Contact | None:
        """Called for each contact read, before mapping; return a replacement contact,
        or ``None`` to keep it. Implementations run in turn, each seeing the last result."""
        raise NotImplementedError

    @hookspec
    def crmsync_run_started(self, run_id: str, mode: str, full: bool) -> None:
        """A batch run (or the real-time worker) started."""

    @hookspec
    def crmsync_run_finished(self, run_id: str, stats: dict[str, Any]) -> None:
        """A batch run finished; ``stats`` is the summary printed by ``sync --json``."""

    @hookspec
    def crmsync_event_received(self, endpoint: str, changes: list[Change]) -> None:
        """An inbound event was authenticated, decoded and stored in the inbox."""


def build_plugin_manager(
    builtins: Iterable[object] = (), *, load_entry_points: bool = True
) -> pluggy.PluginManager:
    """The one place a plugin manager is built: specs, built-ins, then installed plugins.

    ``CRMSYNC_PLUGINS=a,b`` restricts which installed plugins load; ``CRMSYNC_PLUGINS=``
    (empty) loads none, which is what tests use.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpecs)
    for plugin in builtins:
        pm.register(plugin)
    if load_entry_points:
        allowed = os.environ.get("CRMSYNC_PLUGINS")
        if allowed is None:
            pm.load_setuptools_entrypoints(PLUGINS)
        elif allowed.strip():
            for name in (part.strip() for part in allowed.split(",")):
                if name:
                    pm.load_setuptools_entrypoints(PLUGINS, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a crmsync plugin implements an unknown hook: {exc}") from exc
    return pm


class Hooks:
    """Typed calls into the plugin manager."""

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm or build_plugin_manager(load_entry_points=False)

    def post_operation(self, change: Change, context: PostOpContext) -> list[Change]:
        results: list[list[Change]] = self.pm.hook.crmsync_post_operation(
            change=change, context=context
        )
        return [follow for batch in results for follow in (batch or [])]

    def transform_contact(self, contact: Contact, direction: Direction) -> Contact:
        for impl in reversed(self.pm.hook.crmsync_transform_contact.get_hookimpls()):
            replaced = impl.function(contact=contact, direction=direction)
            if isinstance(replaced, Contact):
                contact = replaced
        return contact

    @property
    def has_transforms(self) -> bool:
        return bool(self.pm.hook.crmsync_transform_contact.get_hookimpls())

    @property
    def has_post_operations(self) -> bool:
        return bool(self.pm.hook.crmsync_post_operation.get_hookimpls())

    def run_started(self, run_id: str, mode: str, full: bool) -> None:
        self.pm.hook.crmsync_run_started(run_id=run_id, mode=mode, full=full)

    def run_finished(self, run_id: str, stats: dict[str, Any]) -> None:
        self.pm.hook.crmsync_run_finished(run_id=run_id, stats=stats)

    def event_received(self, endpoint: str, changes: list[Change]) -> None:
        self.pm.hook.crmsync_event_received(endpoint=endpoint, changes=changes)
