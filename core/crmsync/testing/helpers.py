"""Helpers for connector tests: factory fixtures whose emulators and connectors are stopped
and closed when the test ends, and ``eventually`` for what happens in the background.

A vendor's ``conftest.py`` writes only what is its own::

    @pytest.fixture
    def serve():
        def start(contacts=0, **options):
            return EmulatorServer(MyEmulator(contacts=contacts, **options)).start()

        with closing_factory(start, EmulatorServer.stop) as factory:
            yield factory

    @pytest.fixture
    def connect(monkeypatch):
        with closing_factory(lambda server, **overrides: connector_on(
                MyConnector, server, monkeypatch.setenv, **overrides), MyConnector.close) as make:
            yield make
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from ..contract import Connector
    from ..emulator import Emulator, EmulatorServer

__all__ = ["closing_factory", "connector_on", "eventually"]

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C", bound="Connector")


@contextlib.contextmanager
def closing_factory(make: Callable[P, T], close: Callable[[T], object]
                    ) -> Iterator[Callable[P, T]]:
    """``make`` as a factory whose every product is given to ``close`` (in the order they
    were made) when the block ends, even when the test failed."""
    made: list[T] = []

    def factory(*args: P.args, **kwargs: P.kwargs) -> T:
        thing = make(*args, **kwargs)
        made.append(thing)
        return thing

    try:
        yield factory
    finally:
        for thing in made:
            close(thing)


def connector_on(connector_class: type[C], emulator: Emulator | EmulatorServer,
                 setenv: Callable[[str, str], object], **overrides: Any) -> C:
    """A ``connector_class`` pointed at a running emulator: the settings of its demo profile
    with ``overrides``; the profile's throw-away secrets are put in the environment with
    ``setenv`` (``monkeypatch.setenv``), where a user's would be."""
    from ..emulator import EmulatorServer

    running = emulator.emulator if isinstance(emulator, EmulatorServer) else emulator
    if running is None:
        raise ValueError("connector_on needs an emulator (or the server of one)")
    profile = running.demo_profile()
    for key, value in profile["secrets"].items():
        setenv(key, value)
    settings = connector_class.Settings.load(connector_class.name,
                                             {**profile["settings"], **overrides})
    return connector_class(settings)


def eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.01) -> T:
    """Wait until ``check()`` is truthy and return it; fail with what it last returned."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(interval)
        value = check()
    return value
