"""The crmsync pytest plugin (opt-in: ``-p crmsync.testing.plugin`` or auto via entry point).

pytest loads it wherever crmsync is installed (it loads every ``pytest11`` entry point), so
it costs nothing until used: it imports pytest and the standard library only, and the
``crmsync_emulator`` fixture imports the harness (Starlette, uvicorn, the emulator) when a
test asks for it, failing that test with the extra to install if it is missing.

Gives connector authors:

- ``crmsync_emulator(name, **kwargs)``: a factory fixture that serves a registered
  emulator on 127.0.0.1 for the test and stops it afterwards;
- ``vcr_config()``: the shared cassette configuration, replay-only unless
  ``CRMSYNC_RECORD=1``, scrubbing auth headers, passwords and tokens before anything
  is written (pass it to ``vcr.VCR(**vcr_config())``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import pytest

if TYPE_CHECKING:
    from ..emulator import EmulatorServer

__all__ = ["SCRUB", "crmsync_emulator", "scrub_text", "vcr_config"]

SCRUB = "<scrubbed>"
_SECRET_KEYS = re.compile(
    r"(pass(word)?|secret|token|access_?key|accesskey|session(_?id|name)?|sessionName|"
    r"client_assertion|assertion|refresh|authorization|api_?key|code_verifier)",
    re.IGNORECASE,
)
_SECRET_HEADERS = ("authorization", "oauth-token", "cookie", "set-cookie", "x-sfdc-session")


def scrub_text(text: str) -> str:
    """Blank secrets in a JSON, form-encoded or XML body."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict | list):
        return json.dumps(_scrub_json(data))
    if "=" in text and "<" not in text:
        pairs = parse_qsl(text, keep_blank_values=True)
        if pairs:
            return urlencode([(k, SCRUB if _SECRET_KEYS.search(k) else v) for k, v in pairs])
    return re.sub(r"<((?:\w+:)?(?:password|sessionId|token))>[^<]*</",
                  rf"<\1>{SCRUB}</", text, flags=re.IGNORECASE)


def _scrub_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (SCRUB if _SECRET_KEYS.search(str(k)) and isinstance(v, str | int)
                    else _scrub_json(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(item) for item in value]
    return value


def _before_request(request: Any) -> Any:
    if request.body:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        request.body = scrub_text(body).encode()
    return request


def _before_response(response: dict[str, Any]) -> dict[str, Any]:
    body = response.get("body", {}).get("string")
    if body:
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        response["body"]["string"] = scrub_text(text).encode()
    for header in list(response.get("headers", {})):
        if header.lower() in _SECRET_HEADERS:
            response["headers"][header] = [SCRUB]
    return response


def vcr_config() -> dict[str, Any]:
    """Keyword arguments for ``vcr.VCR``: replay-only in CI, secrets scrubbed."""
    return {
        "record_mode": "once" if os.environ.get("CRMSYNC_RECORD") == "1" else "none",
        "filter_headers": [(name, SCRUB) for name in _SECRET_HEADERS],
        "filter_query_parameters": [("sessionName", SCRUB), ("accessKey", SCRUB),
                                    ("access_token", SCRUB)],
        "filter_post_data_parameters": [("password", SCRUB), ("client_secret", SCRUB),
                                        ("refresh_token", SCRUB), ("accessKey", SCRUB)],
        "before_record_request": _before_request,
        "before_record_response": _before_response,
        "decode_compressed_response": True,
        "match_on": ["method", "scheme", "host", "port", "path", "query", "body"],
    }


@pytest.fixture
def crmsync_emulator() -> Iterator[Callable[..., EmulatorServer]]:
    """``server = crmsync_emulator("name", contacts=10, tls=False)``: served until teardown."""
    try:
        from ..emulator import EmulatorServer
        from ..errors import PluginError
        from ..registry import load_emulator
    except ModuleNotFoundError as exc:  # crmsync installed without its emulators extra
        pytest.fail(f"crmsync_emulator needs {exc.name!r}: "
                    "run pip install 'crmsync[emulators]'", pytrace=False)
    from .helpers import closing_factory

    def start(name: str, *, contacts: int = 0, seed: int = 0, tls: bool = False,
              **kwargs: Any) -> EmulatorServer:
        try:
            emulator_class = load_emulator(name)
        except PluginError as exc:  # not installed, or without the emulators extra
            pytest.fail(str(exc), pytrace=False)
        emulator = emulator_class(contacts=contacts, seed=seed, **kwargs)
        return EmulatorServer(emulator, tls=tls).start()

    with closing_factory(start, EmulatorServer.stop) as factory:
        yield factory
