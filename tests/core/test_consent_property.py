"""Property: an unsubscribe is never undone by stale data, over random interleavings.

Random sequences of CRM edits (unrelated fields, opt-out on, opt-out off), ESP
unsubscribes and syncs run through the real engine (memory connectors, API mode). What
crmsync sends to the ESP is recorded. Under ``resubscribe = "never"``, after the first
unsubscribe on a list nothing but "unsubscribed" is ever sent for it; under
``explicit_newer``, only a *pending* (confirmation) after an explicit opt-in in the CRM.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.model import Status
from crmsync.testing.memory import MemoryEspConnector, reset_stores

from .conftest import Pair, write_config

EMAILS = ["ann@example.com", "bob@example.com"]
step = st.one_of(
    st.tuples(st.just("crm_edit"), st.sampled_from(EMAILS)),
    st.tuples(st.just("crm_opt_out"), st.sampled_from(EMAILS)),
    st.tuples(st.just("crm_opt_in"), st.sampled_from(EMAILS)),
    st.tuples(st.just("esp_unsubscribe"), st.sampled_from(EMAILS)),
    st.tuples(st.just("sync"), st.just("")),
)


def _run(steps, policy: str, monkeypatch_write) -> None:
    reset_stores()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        pair = Pair(tmp, write_config(tmp, mode="api", resubscribe=policy))
        ids = {email: pair.crm.add(email, fields={"OptOut": "false", "LastName": "x"})
               for email in EMAILS}
        sent: list[tuple[str, str, Status]] = []
        history: list[tuple[str, str]] = []
        monkeypatch_write(sent)
        pair.sync()
        for action, email in [*steps, ("sync", "")]:
            history.append((action, email))
            if action == "crm_edit":
                pair.crm.update(ids[email], fields={"LastName": f"x{len(history)}"})
            elif action == "crm_opt_out":
                pair.crm.update(ids[email], fields={"OptOut": "true"})
            elif action == "crm_opt_in":
                pair.crm.update(ids[email], fields={"OptOut": "false"})
            elif action == "esp_unsubscribe":
                with pair.esp_connector() as esp:
                    esp.unsubscribe(email, "1")
            else:
                pair.sync()
                sent.append(("sync", "", Status.SUBSCRIBED))
        for email in EMAILS:
            unsubscribed = False
            opted_in_since = False
            for item in sent:
                if item[0] != email:
                    continue
                status = item[2]
                if status == Status.UNSUBSCRIBED:
                    unsubscribed = True
                    opted_in_since = False
                elif unsubscribed:
                    assert policy == "explicit_newer", f"{email} resubscribed by stale data"
                    assert status == Status.PENDING, "a re-opt-in must go through confirmation"
            del opted_in_since
            # an ESP unsubscribe always counts; a CRM opt-out once a sync has seen it
            unsubscribed_ever = False
            crm_opted_out = False
            for action, who in history:
                if action == "esp_unsubscribe" and who == email:
                    unsubscribed_ever = True
                elif action == "crm_opt_out" and who == email:
                    crm_opted_out = True
                elif action == "crm_opt_in" and who == email:
                    crm_opted_out = False
                elif action == "sync" and crm_opted_out:
                    unsubscribed_ever = True
            if policy == "never" and unsubscribed_ever:
                assert pair.esp_status(email, "1") == "unsubscribed", (email, history)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=12),
       policy=st.sampled_from(["never", "explicit_newer"]))
def test_unsubscribe_is_sticky(steps, policy, monkeypatch) -> None:
    original = MemoryEspConnector.write

    def install(sent):
        def recording(self, changes):
            for change in changes:
                for list_id, sub in change.subscriptions.items():
                    if list_id == "1":
                        sent.append((change.email, list_id, sub.status))
            return original(self, changes)

        monkeypatch.setattr(MemoryEspConnector, "write", recording)

    _run(steps, policy, install)
    monkeypatch.setattr(MemoryEspConnector, "write", original)
