"""The toolkit for connector authors: what an HTTP connector needs besides its vendor.

- :class:`HttpConnectorSettings`: the settings base (``base_url``, ``timeout_s``,
  ``rate_per_s``, ``retries``, ``ca_file``, ``overlap_s``) and the client they describe;
- :func:`build_client`, :func:`idempotent`: the paced client with the one retry policy;
- :class:`TokenAuth`, :class:`Token`: a token flow as an ``httpx.Auth`` (obtain, attach,
  refresh once on a refused token, one renewal at a time);
- :class:`ErrorMap`, :class:`ErrorRule`: the vendor's error answers as data;
- paginators (:func:`page_number_pages`, :func:`offset_pages`, :func:`next_url_pages`,
  :func:`cursor_pages`, :func:`keyset_pages`);
- :func:`write_batches`, :func:`results_in_order`: batches with one result per change;
- :func:`verify_hmac`: a webhook signature over method, URL, body and timestamp;
- :func:`rejected_address`: the entry of a read record whose address is not valid.

The public API is what this module exports; a test pins the list.
"""

from __future__ import annotations

from ..contract import Capabilities, Connector, iana_time_zone
from ..http import RetryPolicy, build_client, idempotent, mark_streamed, retry_after_seconds
from ..model import rejected_address
from .auth import Token, TokenAuth, copy_request, with_form_value
from .batch import chunks, failure, results_in_order, write_batches
from .errors import ErrorMap, ErrorRule, body_value
from .paging import cursor_pages, keyset_pages, next_url_pages, offset_pages, page_number_pages
from .settings import DEPRECATED_SPELLINGS, HttpConnectorSettings
from .webhooks import verify_hmac

__all__ = [
    "DEPRECATED_SPELLINGS",
    "Capabilities",
    "Connector",
    "ErrorMap",
    "ErrorRule",
    "HttpConnectorSettings",
    "RetryPolicy",
    "Token",
    "TokenAuth",
    "body_value",
    "build_client",
    "chunks",
    "copy_request",
    "cursor_pages",
    "failure",
    "iana_time_zone",
    "idempotent",
    "keyset_pages",
    "mark_streamed",
    "next_url_pages",
    "offset_pages",
    "page_number_pages",
    "rejected_address",
    "results_in_order",
    "retry_after_seconds",
    "verify_hmac",
    "with_form_value",
    "write_batches",
]
