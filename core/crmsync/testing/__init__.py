"""Testing aids for connector authors: the contract suite, the in-memory connectors,
and the pytest plugin (fixtures ``crmsync_emulator`` and the secret-scrubbing vcr config).
"""

from __future__ import annotations

__all__: list[str] = []
