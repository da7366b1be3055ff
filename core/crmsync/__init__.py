"""crmsync: keep a CRM and an email-marketing platform in sync, both ways.

The public API is what this module exports; everything else is internal and may
change. A test pins this list. Embedding: ``load_config`` reads a ``crmsync.toml``,
``open_side`` / ``open_store`` give its connectors and state store, ``build_batch`` a
batch run over them (``.run(full=False)``). Connector authors test with
``crmsync.testing`` (the contract suite, the emulator harness).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import exports

if TYPE_CHECKING:  # the names below are imported on first use: `import crmsync` stays cheap
    from .config import Config, load_config
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
    from .runtime import build_batch, build_connector, open_side, open_store

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "Capabilities",
    "Change",
    "Config",
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
    "build_batch",
    "build_connector",
    "load",
    "load_config",
    "normalize_email",
    "open_side",
    "open_store",
]

# Where each public name lives. They are imported on first use (PEP 562), so that a
# command as small as `crmsync --version` (every cron run pays it) does not import
# httpx, SQLAlchemy or pydantic-settings; none of them imports Starlette, uvicorn or an
# emulator (those come with `crmsync serve` and `crmsync.testing`).
_LAZY = {
    "Capabilities": ".contract",
    "Connector": ".contract",
    "ConnectorSettings": ".contract",
    "FileExchange": ".contract",
    "MessageSender": ".contract",
    "MultiListSubscriber": ".contract",
    "AuthError": ".errors",
    "ConfigError": ".errors",
    "CrmsyncError": ".errors",
    "DataError": ".errors",
    "EventRejected": ".errors",
    "PluginError": ".errors",
    "QuotaExhausted": ".errors",
    "RateLimited": ".errors",
    "RemoteError": ".errors",
    "StateError": ".errors",
    "TransportError": ".errors",
    "Change": ".model",
    "Contact": ".model",
    "Cursor": ".model",
    "Group": ".model",
    "Health": ".model",
    "InboundRequest": ".model",
    "MailingList": ".model",
    "Op": ".model",
    "Page": ".model",
    "SendResult": ".model",
    "Status": ".model",
    "Subscription": ".model",
    "WriteResult": ".model",
    "normalize_email": ".model",
    "load": ".registry",
    "Config": ".config",
    "load_config": ".config",
    "build_batch": ".runtime",
    "build_connector": ".runtime",
    "open_side": ".runtime",
    "open_store": ".runtime",
}


__getattr__, __dir__ = exports(__name__, _LAZY, globals())
