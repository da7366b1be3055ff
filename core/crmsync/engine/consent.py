"""The consent policy: an unsubscribe is sticky.

One function decides whether an incoming status for one contact on one list may
replace what crmsync believes (the snapshot). The rules, in order:

1. nothing known yet: the incoming status stands (an already opted-out new contact
   is sent as unsubscribed, never as subscribed);
2. the same status: nothing to do;
3. an unsubscribe always wins;
4. over an unsubscribe, "subscribed" or "pending" wins only when the policy is
   ``explicit_newer``, the incoming opt-in is explicit (a person's own action) and
   strictly newer than the unsubscribe; an opt-in coming from the CRM then goes to the
   ESP as *pending*, through its confirmation flow;
5. pending becomes subscribed only on the ESP's word (the confirmation click);
6. subscribed is never downgraded to pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ..model import Status

__all__ = ["Decision", "decide"]

Side = Literal["crm", "esp"]
Policy = Literal["never", "explicit_newer"]


@dataclass(frozen=True)
class Decision:
    """Apply ``status`` (when ``apply``), or keep what is known; ``why`` for logs and plans."""

    apply: bool
    status: Status
    why: str


def decide(
    current: Status | None,
    current_at: datetime | None,
    incoming: Status,
    incoming_at: datetime | None,
    *,
    explicit: bool,
    from_side: Side,
    policy: Policy,
) -> Decision:
    """Whether ``incoming`` (said by ``from_side``) replaces ``current``; see the module doc."""
    if current is None:
        return Decision(True, incoming, "new")
    if incoming == current:
        return Decision(False, current, "unchanged")
    if incoming == Status.UNSUBSCRIBED:
        return Decision(True, incoming, "unsubscribe wins")
    if current == Status.UNSUBSCRIBED:
        newer = (incoming_at is not None and current_at is not None
                 and incoming_at > current_at)
        if policy == "explicit_newer" and explicit and newer:
            status = Status.PENDING if from_side == "crm" else incoming
            return Decision(True, status, "explicit newer opt-in")
        return Decision(False, current, "unsubscribe is sticky")
    if current == Status.PENDING and incoming == Status.SUBSCRIBED:
        if from_side == "esp":
            return Decision(True, incoming, "confirmed at the ESP")
        return Decision(False, current, "awaiting the ESP's confirmation")
    if current == Status.SUBSCRIBED and incoming == Status.PENDING:
        return Decision(False, current, "already subscribed")
    return Decision(True, incoming, "changed")
