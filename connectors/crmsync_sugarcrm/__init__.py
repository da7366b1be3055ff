"""crmsync connector for SugarCRM (REST v10/v11) and SugarCRM CE / SuiteCRM (legacy v4_1).

``from crmsync_sugarcrm import SugarConnector``; the emulator is
``crmsync_sugarcrm.emulator.SugarEmulator``.
"""

from .connector import SugarConnector
from .settings import SugarSettings

__all__ = ["SugarConnector", "SugarSettings"]
