"""crmsync: keep a CRM and an email-marketing platform in sync, both ways.

The public API is what this module exports; everything else is internal and may
change. A test pins this list.
"""

from __future__ import annotations

from .contract import (
    Capabilities,
    Connector,
    ConnectorSettings,
    FileExchange,
    MessageSender,
    MultiListSubscriber,
)
from .errors import (
    AuthError,
    ConfigError,
    CrmsyncError,
    DataError,
    EventRejected,
    PluginError,
    QuotaExhausted,
    RateLimited,
    RemoteError,
    StateError,
    TransportError,
)
from .model import (
    Change,
    Contact,
    Cursor,
    Group,
    Health,
    InboundRequest,
    MailingList,
    Op,
    Page,
    SendResult,
    Status,
    Subscription,
    WriteResult,
    normalize_email,
)
from .registry import load

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "Capabilities",
    "Change",
    "ConfigError",
    "Connector",
    "ConnectorSettings",
    "Contact",
    "CrmsyncError",
    "Cursor",
    "DataError",
    "EventRejected",
    "FileExchange",
    "Group",
    "Health",
    "InboundRequest",
    "MailingList",
    "MessageSender",
    "MultiListSubscriber",
    "Op",
    "Page",
    "PluginError",
    "QuotaExhausted",
    "RateLimited",
    "RemoteError",
    "SendResult",
    "StateError",
    "Status",
    "Subscription",
    "TransportError",
    "WriteResult",
    "__version__",
    "load",
    "normalize_email",
]
