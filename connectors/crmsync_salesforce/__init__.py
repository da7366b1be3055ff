"""crmsync connector for Salesforce (a CRM): Contacts, Leads, Campaign membership, opt-out.

Entry points: ``salesforce`` -> :class:`SalesforceConnector`; its emulator is
``crmsync_salesforce.emulator:SalesforceEmulator``.
"""

from ._connector import SalesforceConnector
from ._settings import SalesforceSettings

__all__ = ["SalesforceConnector", "SalesforceSettings"]
