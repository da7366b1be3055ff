"""The Salesforce emulator served by ``crmsync emulate salesforce`` (HTTPS by default)."""

from ._app import EVENTS_STATUSES, SalesforceEmulator

__all__ = ["EVENTS_STATUSES", "SalesforceEmulator"]
