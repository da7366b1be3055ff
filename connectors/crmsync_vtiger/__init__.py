"""crmsync connector for vTiger CRM (open-source webservice and vTiger Cloud REST).

Contacts are read with VTQL (full) and ``sync`` (changes), written with ``revise``
(never ``update``, which blanks what it is not given); status is ``emailoptout`` and
campaign membership. See docs/connectors/vtiger.md.
"""

from __future__ import annotations

from ._connector import VtigerConnector
from ._settings import VtigerSettings

__all__ = ["VtigerConnector", "VtigerSettings"]
