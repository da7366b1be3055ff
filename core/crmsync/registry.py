"""Finding and loading connectors (and their emulators) by name.

Connectors are entry points in the ``crmsync.connectors`` group (emulators in
``crmsync.emulators``), built-in ones exactly like third-party ones. ``load`` uses
stevedore's ``DriverManager`` to load exactly one; ``available`` lists them all, and a
broken or half-installed plugin becomes a :class:`PluginInfo` carrying one clear
message while the others still load. ``CRMSYNC_CONNECTORS=a,b`` restricts what is
loaded (tests set it so they never depend on whatever happens to be installed).

An entry point may name the extra it needs, ``memory = "crmsync.testing.memory:MemoryConnector
[emulators]"``: it is registered only where that extra is installed (every requirement of
the extra is), so a plain ``pip install crmsync`` lists no test doubles and
``load("memory")`` says which extra to install. Emulators are loaded only when asked
for: listing or loading a connector imports no emulator, Starlette or uvicorn.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stevedore import DriverManager, ExtensionManager

from .contract import Connector
from .errors import PluginError

if TYPE_CHECKING:
    from .emulator import Emulator

__all__ = [
    "CONNECTORS",
    "EMULATORS",
    "PluginInfo",
    "available",
    "load",
    "load_emulator",
    "registered",
]

CONNECTORS = "crmsync.connectors"
EMULATORS = "crmsync.emulators"
ALLOW_ENV = "CRMSYNC_CONNECTORS"
TEST_DOUBLES = "emulators"  # the extra that installs the emulators and the in-memory doubles


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin: loaded (``plugin`` set) or broken (``error`` set)."""

    name: str
    target: str
    distribution: str
    version: str
    plugin: Any = None
    error: str | None = None
    test_double: bool = False  # installed by the emulators extra (or from crmsync.testing)


def _allowed() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV, "").strip()
    if not raw:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _entry_points(group: str, *, with_unmet_extras: bool = False) -> list[md.EntryPoint]:
    allowed = _allowed()
    seen: dict[str, md.EntryPoint] = {}
    for ep in md.entry_points(group=group):
        if (allowed is None or ep.name in allowed) and (
                with_unmet_extras or not _unmet_extras(ep)):
            seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda ep: ep.name)


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.\-]+", requirement)
    return _normal(match.group(0)) if match else ""


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True


def _unmet_extras(ep: md.EntryPoint) -> list[str]:
    """The extras ``ep`` names (``module:attr [extra]``) whose requirements are not all
    installed: the entry point is then not registered."""
    if not ep.extras:
        return []
    dist = getattr(ep, "dist", None)
    if dist is None:
        return []
    own = _normal(str(dist.metadata["Name"]))
    unmet = []
    for extra in ep.extras:
        needed = [_requirement_name(r) for r in dist.requires or []
                  if re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", r)]
        if not all(_installed(name) for name in needed if name and name != own):
            unmet.append(extra)
    return unmet


def _is_test_double(ep: md.EntryPoint, plugin: Any) -> bool:
    return TEST_DOUBLES in ep.extras or str(getattr(plugin, "__module__", "")).startswith(
        "crmsync.testing")


def registered(group: str = CONNECTORS) -> list[str]:
    """The names registered in ``group``, without importing any of them."""
    return [ep.name for ep in _entry_points(group)]


def _dist(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        # stevedore hands out entry points from its cache, without their distribution
        for group in (CONNECTORS, EMULATORS):
            for candidate in md.entry_points(group=group):
                if candidate.name == ep.name and candidate.value == ep.value:
                    dist = getattr(candidate, "dist", None)
                    break
    if dist is None:
        return "unknown", ""
    return str(dist.metadata["Name"]), str(dist.version)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _missing_extra(distribution: str, module: str, plugin: str = "") -> str | None:
    """The extra of ``distribution`` that would install ``module``, if one would: the one
    requiring a package of that name or, as a module's name need not be its package's
    (``jwt`` comes with ``pyjwt``), the extra named after the plugin, if there is one."""
    try:
        requires = md.distribution(distribution).requires or []
    except md.PackageNotFoundError:
        return None
    wanted = _normal(module.split(".")[0])
    extras = set()
    for requirement in requires:
        marker = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        package = re.match(r"[A-Za-z0-9_.\-]+", requirement)
        if marker and package and _normal(package.group(0)) == wanted:
            return marker.group(1)
        if marker:
            extras.add(marker.group(1))
    return _normal(plugin) if plugin and _normal(plugin) in extras else None


def explain(ep: md.EntryPoint, exc: BaseException) -> str:
    """One message naming the plugin, its distribution and what to do."""
    distribution, version = _dist(ep)
    where = f"connector {ep.name!r} (distribution {distribution} {version}, entry point {ep.value})"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        extra = _missing_extra(distribution, exc.name, ep.name)
        if extra:
            return (f"{where} needs the module {exc.name!r}, which is not installed: "
                    f"run pip install '{distribution}[{extra}]'")
        return (f"{where} cannot import {exc.name!r}: the plugin is half-installed; "
                f"reinstall {distribution}")
    return f"{where} is broken: {type(exc).__name__}: {exc}; reinstall or upgrade {distribution}"


def available(group: str = CONNECTORS) -> list[PluginInfo]:
    """Every registered plugin of ``group``, loaded or with the reason it is broken."""
    found: list[PluginInfo] = []
    failures: dict[str, str] = {}

    def on_failure(_manager: Any, ep: md.EntryPoint, exc: BaseException) -> None:
        failures[ep.name] = explain(ep, exc)

    allowed = _allowed()
    _forget_cached(group)
    manager = ExtensionManager(
        namespace=group,
        invoke_on_load=False,
        on_load_failure_callback=on_failure,
    )
    loaded = {ext.name: ext.plugin for ext in manager.extensions}
    for ep in _entry_points(group):
        if allowed is not None and ep.name not in allowed:
            continue
        distribution, version = _dist(ep)
        plugin = loaded.get(ep.name)
        error = failures.get(ep.name)
        if plugin is not None and error is None:
            error = _check_plugin(group, ep.name, plugin)
            if error:
                plugin = None
        found.append(PluginInfo(ep.name, ep.value, distribution, version, plugin, error,
                                _is_test_double(ep, plugin)))
    return found


def _forget_cached(group: str) -> None:
    # stevedore keeps entry points per process; a plugin installed since must be seen
    ExtensionManager.ENTRY_POINT_CACHE.pop(group, None)


def _check_plugin(group: str, name: str, plugin: Any) -> str | None:
    base: type[Any] = Connector
    if group == EMULATORS:  # only an emulator's loading imports the harness (Starlette)
        from .emulator import Emulator

        base = Emulator
    if not (isinstance(plugin, type) and issubclass(plugin, base)):
        return f"plugin {name!r} in {group} is not a {base.__name__} subclass: {plugin!r}"
    return None


def _load(group: str, name: str) -> Any:
    allowed = _allowed()
    if allowed is not None and name not in allowed:
        raise PluginError(
            f"{name!r} is not in {ALLOW_ENV}={os.environ[ALLOW_ENV]!r}: add it to load it",
            name=name,
        )
    eps = {ep.name: ep for ep in _entry_points(group)}
    hidden = {ep.name: ep for ep in _entry_points(group, with_unmet_extras=True)}
    if name not in eps and name in hidden:
        distribution, _ = _dist(hidden[name])
        kind = "connector" if group == CONNECTORS else "emulator"
        extras = ",".join(_unmet_extras(hidden[name]))
        raise PluginError(
            f"the {kind} {name!r} is installed with the {extras} extra: "
            f"run pip install '{distribution}[{extras}]'", name=name, distribution=distribution)
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        kind = "connector" if group == CONNECTORS else "emulator"
        raise PluginError(
            f"no {kind} named {name!r} is installed (installed: {known}); "
            f"run `crmsync connectors` to list them, or install the package that provides it",
            name=name,
        )
    _forget_cached(group)
    try:
        driver = DriverManager(namespace=group, name=name, invoke_on_load=False,
                               on_load_failure_callback=_raise)
    except PluginError:
        raise
    except Exception as exc:  # stevedore wraps some failures in its own errors
        raise PluginError(explain(eps[name], exc), name=name) from exc
    plugin = driver.driver
    problem = _check_plugin(group, name, plugin)
    if problem:
        raise PluginError(problem, name=name)
    return plugin


def _raise(_manager: Any, ep: md.EntryPoint, exc: BaseException) -> None:
    distribution, _ = _dist(ep)
    raise PluginError(explain(ep, exc), name=ep.name, distribution=distribution) from exc


def load(name: str) -> type[Connector]:
    """The connector class registered as ``name``; ``PluginError`` if missing or broken."""
    plugin: type[Connector] = _load(CONNECTORS, name)
    return plugin


def load_emulator(name: str) -> type[Emulator]:
    """The emulator class registered as ``name``."""
    plugin: type[Emulator] = _load(EMULATORS, name)
    return plugin
