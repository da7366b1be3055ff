"""A full CRM read that comes up short of the CRM's own count fails loudly (issue #13).

SuiteCRM ignored the connector's order_by and a full read lost contacts beyond one page
while the run ended "succeeded". The engine compares the distinct records a full read
yields with ``Connector.full_read_count()``; here the memory CRM loses a record the way
bad paging would (``lose_emails``).
"""

from __future__ import annotations

import pytest

from crmsync.engine.completeness import IncompleteRead
from crmsync.runtime import open_store

from .conftest import Pair, _seeded_pair


def _losing(pair: Pair, emails: list[str]) -> None:
    crm = pair.config.crm
    pair.config = pair.config.model_copy(update={"crm": crm.model_copy(
        update={"settings": {**crm.settings, "lose_emails": emails}})})


def _last_run(pair: Pair) -> dict:
    state = open_store(pair.config)
    try:
        return state.runs(limit=1)[0]
    finally:
        state.close()


@pytest.mark.parametrize("mode", ["files", "api"])
def test_a_short_full_read_fails_and_the_next_run_reads_everything(tmp_path, mode) -> None:
    pair = _seeded_pair(tmp_path, "sqlite:///state.db", mode=mode)
    _losing(pair, ["bob@example.com"])
    with pytest.raises(IncompleteRead) as caught:
        pair.sync()
    assert str(caught.value).startswith(
        "full read of memory came up short: 3 distinct records read, but memory counts 4")
    assert _last_run(pair)["status"] == "failed"
    # the cursor is forgotten: the next run is a full read again, and Bob arrives
    _losing(pair, [])
    stats = pair.sync()
    assert stats.status == "succeeded" and stats.full and stats.crm_read == 4
    if mode == "files":
        pair.esp_import()
    assert pair.esp_status("bob@example.com", "1") == "subscribed"


def test_a_whole_full_read_and_a_diff_are_not_counted_against(tmp_path) -> None:
    pair = _seeded_pair(tmp_path, "sqlite:///state.db", mode="api")
    assert pair.sync().status == "succeeded"
    # a diff read is not compared with the count (it reads only what changed)
    _losing(pair, ["bob@example.com"])
    pair.crm.update(pair.crm.by_email("ann@example.com"), fields={"LastName": "Again"})
    assert pair.sync().status == "succeeded"
