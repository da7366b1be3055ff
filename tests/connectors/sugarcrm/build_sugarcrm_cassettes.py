"""Rebuild cassettes/sugarcrm/*.yaml from the captures (run by hand, not by pytest).

    /work/venv/bin/python tests/connectors/sugarcrm/build_sugarcrm_cassettes.py

Each scenario runs the real connector against a mock transport that answers with the
captured (v4_1) or documented (REST) bodies in order; vcrpy records the exchanges with
secrets scrubbed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from sugarcrm_cassettes import BASE_URL, CASSETTES, PASSWORD, SCENARIOS, recorder
from test_sugarcrm_cassettes import ACTIONS

from crmsync.http import RetryPolicy, build_client
from crmsync_sugarcrm import SugarConnector


def main() -> None:
    CASSETTES.mkdir(parents=True, exist_ok=True)
    os.environ["CRMSYNC_SUGARCRM_PASSWORD"] = PASSWORD
    machine = recorder(record=True)
    for name, (overrides, answers) in SCENARIOS.items():
        script = iter(answers)

        def answer(request: httpx.Request, script=script) -> httpx.Response:
            status, body = next(script)()
            if isinstance(body, str):
                return httpx.Response(status, content=body.encode(),
                                      headers={"Content-Type": "text/html; charset=UTF-8"})
            return httpx.Response(status, content=json.dumps(body).encode(),
                                  headers={"Content-Type": "application/json; charset=UTF-8"})

        (CASSETTES / f"{name}.yaml").unlink(missing_ok=True)
        settings = SugarConnector.Settings.load("sugarcrm", {
            "base_url": BASE_URL, "username": "admin", "retries": 1, **overrides})
        client = build_client(transport=httpx.MockTransport(answer),
                              policy=RetryPolicy(attempts=1))
        with machine.use_cassette(f"{name}.yaml"), SugarConnector(settings, http=client) as c:
            ACTIONS[name](c)
        leftover = list(script)
        if leftover:
            raise SystemExit(f"{name}: {len(leftover)} scripted answer(s) were not used")
        print(f"wrote {name}.yaml")


if __name__ == "__main__":
    main()
