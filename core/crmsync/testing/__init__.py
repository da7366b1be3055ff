"""crmsync.testing: what a connector author tests with.

- the contract suite: ``ConnectorContract``, the class a connector's test file subclasses;
- the emulator harness: ``Emulator`` (the base of a vendor emulator: control API, request
  counts, injected faults), ``EmulatorServer`` / ``serving`` (one on 127.0.0.1, TLS from a
  throw-away CA when asked), ``Faults``, ``free_port``;
- the in-memory test doubles ``MemoryConnector`` / ``MemoryEspConnector``;
- ``write_profile_config`` / ``sync_once``: a CRM emulator paired with an ESP in a
  ``crmsync.toml``, and one batch run over it; ``MemoryEspPair``: the same with the
  in-memory ESP, ready to run; ``serving_realtime``: ``crmsync serve`` over a
  configuration, on 127.0.0.1;
- ``ftp_server`` / ``sftp_server``: real file servers on 127.0.0.1;
- ``closing_factory`` / ``connector_on``: factory fixtures whose emulators and connectors
  are stopped and closed at the end of the test, connectors made from a demo profile;
  ``eventually``: wait for what happens in the background;
- ``vcr_config`` / ``scrub_text``: cassettes with the secrets scrubbed.

Installed with ``pip install 'crmsync[emulators]'`` (``[test]`` and ``[demo]`` pull it in).
The pytest plugin (``crmsync.testing.plugin``, registered by the ``pytest11`` entry point)
gives the fixture ``crmsync_emulator``. The public API is what this module exports (a test
pins it); the names are imported on first use, so importing this package, or the plugin,
imports neither Starlette, uvicorn nor any emulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from ..emulator import Emulator, EmulatorServer, Faults, free_port, serving
    from .contract import ConnectorContract
    from .helpers import closing_factory, connector_on, eventually
    from .memory import MemoryConnector, MemoryEspConnector
    from .pairs import MemoryEspPair, serving_realtime, sync_once, write_profile_config
    from .plugin import scrub_text, vcr_config
    from .servers import ftp_server, sftp_server

__all__ = [
    "ConnectorContract",
    "Emulator",
    "EmulatorServer",
    "Faults",
    "MemoryConnector",
    "MemoryEspConnector",
    "MemoryEspPair",
    "closing_factory",
    "connector_on",
    "eventually",
    "free_port",
    "ftp_server",
    "scrub_text",
    "serving",
    "serving_realtime",
    "sftp_server",
    "sync_once",
    "vcr_config",
    "write_profile_config",
]

# Where each public name lives (relative to this package).
_LAZY = {
    "ConnectorContract": ".contract",
    "closing_factory": ".helpers",
    "connector_on": ".helpers",
    "eventually": ".helpers",
    "Emulator": "..emulator",
    "EmulatorServer": "..emulator",
    "Faults": "..emulator",
    "free_port": "..emulator",
    "serving": "..emulator",
    "MemoryConnector": ".memory",
    "MemoryEspConnector": ".memory",
    "MemoryEspPair": ".pairs",
    "serving_realtime": ".pairs",
    "sync_once": ".pairs",
    "write_profile_config": ".pairs",
    "scrub_text": ".plugin",
    "vcr_config": ".plugin",
    "ftp_server": ".servers",
    "sftp_server": ".servers",
}


__getattr__, __dir__ = exports(__name__, _LAZY, globals())
