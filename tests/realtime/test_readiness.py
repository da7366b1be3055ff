"""/readyz means "able to store and to keep up": a full disk, or a CRM poller that has
failed several times in a row, makes it answer 503 (issue 12 point 10, issue 13 point 4)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text

from crmsync.errors import RemoteError
from crmsync.testing.memory import MemoryConnector

from .conftest import esp_unsubscribe, eventually


def fill_the_disk(rt: Any) -> Any:
    """SQLite's max_page_count at the current size: the next page fails SQLITE_FULL,
    as a full disk does."""
    engine = rt.state.engine
    with engine.connect() as conn:
        pages = conn.execute(text("PRAGMA page_count")).scalar()

    def limit(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(engine, "connect", limit)
    engine.dispose()
    return limit


def test_readyz_is_503_while_the_state_store_cannot_store(serve_pair: Any) -> None:
    rt = serve_pair()
    assert rt.http.get("/readyz").status_code == 200
    limit = fill_the_disk(rt)
    big = esp_unsubscribe("ann@example.com")
    big["changes"][0]["reason"] = "x" * 20_000  # an event that needs new pages
    assert rt.post_esp(big).status_code == 503  # refused unstored, as before
    ready = rt.http.get("/readyz")
    assert ready.status_code == 503, ready.text
    [problem] = ready.json()["problems"]
    assert "cannot store events" in problem and "full" in problem
    event.remove(rt.state.engine, "connect", limit)
    rt.state.engine.dispose()
    assert rt.http.get("/readyz").status_code == 200
    assert rt.post_esp(big).status_code == 200


class FlakyCrm(MemoryConnector):
    broken = False

    def read(self, since: Any) -> Any:
        if FlakyCrm.broken:
            raise RemoteError("memory CRM: Access Denied (40) on get_entry_list")
        return super().read(since)


def test_readyz_reports_a_poller_failing_in_a_row(serve_pair: Any, tmp_path: Any) -> None:
    from crmsync.config import load_config

    from .conftest import write_config

    config = load_config(write_config(tmp_path, server='poll = "always"\n'
                                                       "ready_poll_failures = 3"))
    FlakyCrm.broken = False
    crm = FlakyCrm(FlakyCrm.Settings.load("memory", config.crm.settings))
    rt = serve_pair(server='poll = "always"\nready_poll_failures = 3', crm=crm)
    assert rt.http.get("/readyz").status_code == 200
    FlakyCrm.broken = True
    eventually(lambda: rt.http.get("/readyz").status_code == 503)
    problems = rt.http.get("/readyz").json()["problems"]
    assert any("poller failed" in p and "Access Denied (40)" in p for p in problems), problems
    FlakyCrm.broken = False
    eventually(lambda: rt.http.get("/readyz").status_code == 200)
