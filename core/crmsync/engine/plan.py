"""Plan: what each contact's change means, decided without touching anything.

Pure functions from (records or events, the snapshots crmsync holds for them, the list
mapping, the consent policy) to :class:`ContactDecision` objects gathered in a
:class:`Plan`: the change to send to the receiving side, the state update to commit
once it is acknowledged, the post-operations that follow, and the counts a run
reports. Nothing here reads or writes the state store, a file or a vendor:
:mod:`crmsync.engine.apply` reads the snapshots, sends the changes and commits; the
drivers (:mod:`~crmsync.engine.batch`, :mod:`~crmsync.engine.realtime`) say what to
read and when. :func:`~crmsync.engine.consent.decide` is the one consent rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from ..model import Change, Contact, Op, Status, Subscription, assume_valid
from ..state import (
    JournalEntry,
    Snapshot,
    StateUpdate,
    canonical_json,
    content_hash,
    status_hash,
    text_hash,
)
from .consent import decide
from .mapping import ListMapper

__all__ = [
    "ContactDecision",
    "Failure",
    "Plan",
    "Repair",
    "Rules",
    "plan_crm_deletion",
    "plan_crm_record",
    "plan_esp_change",
    "plan_removal",
    "plan_repairs",
    "resend_unsubscribes",
]

Counts = dict[str, dict[str, dict[str, int]]]


@dataclass(frozen=True)
class Rules:
    """What planning needs from the configuration and the run."""

    mapper: ListMapper
    policy: Literal["never", "explicit_newer"]
    deletes: Literal["unsubscribe", "delete", "ignore"]
    crm: str
    esp: str
    run_id: str = ""
    resend: bool = False
    post_operations: bool = False
    #: a run for these ESP lists only (``sync --list``); ``None``: every mapped list
    only_lists: frozenset[str] | None = None


@dataclass
class Failure:
    """A record that did not go through: which side, who, which list, why, retryable
    (``retry_after``: the vendor's own wait, when it gave one)."""

    side: str
    email: str
    list_id: str
    reason: str
    where: str = ""
    code: str = ""
    retryable: bool = False
    retry_after: float | None = None


@dataclass(slots=True)
class ContactDecision:
    """One contact's decision: what to send, and what to commit once it is acknowledged.

    ``send`` is ``None`` when the receiving side needs nothing (a snapshot refresh, a
    change only crmsync records). ESP-side decisions also carry ``if_failed`` (the
    snapshots to commit when the CRM refuses the write: the ESP's word stands, the CRM
    stays behind) and ``applied`` (the change as applied, for post-operations);
    ``origin`` is the queued item the decision came from.
    """

    email: str
    send: Change | None
    update: StateUpdate
    if_failed: list[Snapshot] = field(default_factory=list)
    applied: Change | None = None
    origin: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Repair:
    """An unsubscribe crmsync knows that the CRM record does not show yet."""

    record: Contact
    key: str
    list_id: str
    crm_view: Status
    snapshot: Snapshot


@dataclass
class Plan:
    """Decisions for a page of contacts, and what a run reports about them."""

    decisions: list[ContactDecision] = field(default_factory=list)
    counts: Counts = field(default_factory=dict)
    consent_kept: int = 0
    unchanged: int = 0
    repairs: list[Repair] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def count(self, list_id: str, side: str, what: str, n: int = 1) -> None:
        bucket = self.counts.setdefault(list_id, {}).setdefault(side, {})
        bucket[what] = bucket.get(what, 0) + n


def subscription(list_id: str, status: Status, groups: frozenset[str] = frozenset(),
                 changed_at: datetime | None = None, reason: str | None = None,
                 source: str | None = None, explicit: bool = False) -> Subscription:
    """A Subscription from values already validated (the per-contact hot path)."""
    return assume_valid(Subscription, {
        "list_id": list_id, "status": status, "groups": groups, "changed_at": changed_at,
        "reason": reason, "source": source, "explicit": explicit})


def change(email: str, *, op: Op = Op.UPSERT, ids: Mapping[str, str] | None = None,
           previous_email: str | None = None, fields: Mapping[str, str | None] | None = None,
           memberships: Mapping[str, str | None] | None = None,
           subscriptions: Mapping[str, Subscription] | None = None,
           occurred_at: datetime | None = None, source: str = "", reason: str | None = None,
           event_id: str | None = None) -> Change:
    """A Change from a validated contact's values (the hot path): email already normal."""
    return assume_valid(Change, {
        "email": email, "op": op, "ids": {} if ids is None else ids,
        "previous_email": previous_email, "fields": {} if fields is None else fields,
        "memberships": {} if memberships is None else memberships,
        "subscriptions": {} if subscriptions is None else subscriptions,
        "occurred_at": datetime.now(UTC) if occurred_at is None else occurred_at,
        "source": source, "reason": reason, "event_id": event_id})


# -- the CRM side: records read from the CRM, towards the ESP -----------------------------
def plan_crm_record(rules: Rules, plan: Plan, record: Contact, key: str,
                    previous: str | None, snaps: Mapping[tuple[str, str], Snapshot],
                    old_hash: str | None) -> None:
    """Decide one CRM record against its snapshots: per list, the status the consent
    policy allows, what changed (status, groups, the CRM's own view, the address,
    the mapped fields), and what follows a status change."""
    at = record.modified_at or datetime.now(UTC)
    source = f"crm:{rules.crm}"
    subs: dict[str, Subscription] = {}
    new_snaps: list[Snapshot] = []
    journal: list[JournalEntry] = []
    desired = rules.mapper.desired(record)
    if rules.only_lists is not None:
        desired = {k: v for k, v in desired.items() if k in rules.only_lists}
    for list_id, want in desired.items():
        snap = snaps.get((key, list_id))
        status = want.status
        explicit = False
        if snap is not None:
            if want.status == snap.crm_status:
                status = snap.status  # the CRM did not change its mind: keep what we know
            else:
                explicit = (snap.crm_status == Status.UNSUBSCRIBED
                            and want.status != Status.UNSUBSCRIBED)
                # an undated CRM record never wins a consent conflict
                decision = decide(snap.status, snap.changed_at, want.status,
                                  record.modified_at, explicit=explicit, from_side="crm",
                                  policy=rules.policy)
                if not decision.apply and decision.why != "unchanged":
                    plan.consent_kept += 1
                status = decision.status
        if (status == Status.UNSUBSCRIBED and want.status != Status.UNSUBSCRIBED
                and snap is not None and rules.crm in record.ids):
            # crmsync knows of an unsubscribe the CRM does not show (an ESP unsubscribe
            # of a contact not yet read from the CRM, or a write-back that failed)
            plan.repairs.append(Repair(record, key, list_id, want.status, snap))
        status_changed = snap is None or status != snap.status
        groups_changed = snap is None or want.groups != snap.groups
        crm_changed = snap is None or want.status != snap.crm_status
        if not (status_changed or groups_changed or crm_changed or previous):
            continue
        changed_at = at if status_changed or snap is None else snap.changed_at
        new_snaps.append(Snapshot(
            contact_key=key, list_id=list_id, status=status, groups=want.groups,
            crm_status=want.status, hash=status_hash(status, want.groups),
            changed_at=changed_at,
            source=source if status_changed or snap is None else snap.source))
        if status_changed or groups_changed or previous:
            subs[list_id] = subscription(
                list_id, status, want.groups, changed_at, source=source, explicit=explicit,
                reason="opt-in in the CRM" if explicit else None)
            plan.count(list_id, "esp", "add" if snap is None else status.value
                       if status_changed else "update")
        if status_changed:
            journal.append(JournalEntry(
                contact_key=key, email=record.email, list_id=list_id,
                old_status=snap.status.value if snap else None, new_status=status.value,
                applied_to="esp", source=source, run_id=rules.run_id, at=at,
                reason="explicit opt-in in the CRM" if explicit else None))
    fields = rules.mapper.esp_fields(record)
    fields_json = canonical_json(fields)
    fields_hash = text_hash(fields_json)
    fields_changed = fields_hash != old_hash
    if fields_changed and not subs and desired:
        # a field update travels with the contact's current lists
        for list_id in desired:
            snap = next((s for s in new_snaps if s.list_id == list_id),
                        snaps.get((key, list_id)))
            if snap is not None:
                subs[list_id] = subscription(list_id, snap.status, snap.groups,
                                             snap.changed_at, source=source)
                plan.count(list_id, "esp", "update")
    elif rules.resend and desired:
        # A resend sends the lists the contact is subscribed to, not pending ones: a
        # batch run reads only unsubscriptions from the ESP, so crmsync cannot know
        # whether the person confirmed since, and re-sending "pending" would ask a
        # confirmed subscriber to confirm again. Unsubscribes go in one pass over
        # every one crmsync knows (resend_unsubscribes), CRM contact or not.
        for list_id in desired:
            snap = snaps.get((key, list_id))
            if list_id in subs or snap is None or snap.status != Status.SUBSCRIBED:
                continue
            subs[list_id] = subscription(list_id, snap.status, snap.groups, snap.changed_at,
                                         source=source)
            plan.count(list_id, "esp", "resend")
    if not subs and not fields_changed and not new_snaps and not previous:
        plan.unchanged += 1
        return
    if not desired and not subs and not new_snaps and not previous:
        # on no list crmsync sends to: the ESP gets nobody's data it does not mail
        plan.unchanged += 1
        return
    update = StateUpdate(key, new_snaps, journal, fields_hash, fields, fields_json=fields_json)
    sent_fields = fields if (fields_changed or previous or rules.resend) else {}
    if not subs and not sent_fields:
        plan.decisions.append(ContactDecision(record.email, None, update))
        return
    # A status change runs the post-operations; a contact's first appearance only when
    # it arrives unsubscribed (as an ESP-side one does), so that a first full export
    # does not queue one per contact nor call every on="subscribe" URL.
    changed = [e.list_id for e in journal
               if e.old_status is not None or e.new_status == Status.UNSUBSCRIBED.value]
    if changed and rules.post_operations:
        update.follow_up = change(record.email, ids=record.ids, source=source, occurred_at=at,
                                  subscriptions={list_id: subs[list_id] for list_id in changed})
    plan.decisions.append(ContactDecision(record.email, change(
        record.email, ids=record.ids, previous_email=previous, fields=sent_fields,
        subscriptions=subs, source=source, occurred_at=at), update))


def plan_crm_deletion(rules: Rules, plan: Plan, record: Contact, key: str,
                      snaps: Mapping[tuple[str, str], Snapshot], *,
                      already_sent: bool = False) -> None:
    """A contact deleted in the CRM (``record`` carries the address and ESP id crmsync
    holds): unsubscribed from every list, deleted at the ESP, or ignored, per the
    ``deletes`` policy."""
    at = record.modified_at or datetime.now(UTC)
    known = [s for (k, _), s in snaps.items() if k == key]
    if rules.deletes == "ignore" or not known or (rules.deletes == "delete" and already_sent):
        plan.unchanged += 1  # nothing known, or its deletion already reached the ESP
        return
    source = f"crm:{rules.crm}"
    reason = "deleted in the CRM"
    if rules.deletes == "delete":
        journal = [JournalEntry(contact_key=key, email=record.email, list_id=s.list_id,
                                old_status=s.status.value, new_status="deleted",
                                applied_to="esp", source=source, reason=reason,
                                run_id=rules.run_id, at=at) for s in known]
        for s in known:
            plan.count(s.list_id, "esp", "delete")
        gone = [_unsubscribed(s, frozenset(), at, source) for s in known]
        plan.decisions.append(ContactDecision(record.email, change(
            record.email, ids=record.ids, op=Op.DELETE, source=source, reason=reason,
            occurred_at=at), StateUpdate(key, gone, journal, deleted=True)))
        return
    subs: dict[str, Subscription] = {}
    new_snaps = []
    journal = []
    for s in known:
        if s.status == Status.UNSUBSCRIBED:
            continue
        subs[s.list_id] = subscription(s.list_id, Status.UNSUBSCRIBED, s.groups, at,
                                       source=source, reason=reason)
        new_snaps.append(_unsubscribed(s, s.groups, at, source))
        journal.append(JournalEntry(contact_key=key, email=record.email, list_id=s.list_id,
                                    old_status=s.status.value, new_status="unsubscribed",
                                    applied_to="esp", source=source, reason=reason,
                                    run_id=rules.run_id, at=at))
        plan.count(s.list_id, "esp", "unsubscribed")
    if not subs:
        plan.unchanged += 1
        return
    plan.decisions.append(ContactDecision(record.email, change(
        record.email, ids=record.ids, subscriptions=subs, source=source, reason=reason,
        occurred_at=at), StateUpdate(key, new_snaps, journal)))


def plan_removal(rules: Rules, plan: Plan, snap: Snapshot, email: str, record_id: str,
                 member_key: str) -> None:
    """A contact the CRM took off a membership-fed list: unsubscribed there."""
    at = datetime.now(UTC)
    source = f"crm:{rules.crm}"
    reason = f"removed from {member_key} in the CRM"
    list_id = snap.list_id
    removal = change(email, ids={rules.crm: record_id}, source=source, reason=reason,
                     occurred_at=at, subscriptions={list_id: subscription(
                         list_id, Status.UNSUBSCRIBED, snap.groups, at, source=source,
                         reason=reason)})
    plan.count(list_id, "esp", "unsubscribed")
    update = StateUpdate(snap.contact_key, [_unsubscribed(snap, snap.groups, at, source)], [
        JournalEntry(contact_key=snap.contact_key, email=email, list_id=list_id,
                     old_status=snap.status.value, new_status=Status.UNSUBSCRIBED.value,
                     applied_to="esp", source=source, reason=reason, run_id=rules.run_id,
                     at=at)])
    if rules.post_operations:
        update.follow_up = removal
    plan.decisions.append(ContactDecision(email, removal, update))


def _unsubscribed(snap: Snapshot, groups: frozenset[str], at: datetime,
                  source: str) -> Snapshot:
    return replace(snap, status=Status.UNSUBSCRIBED, groups=groups,
                   crm_status=Status.UNSUBSCRIBED, hash=status_hash(Status.UNSUBSCRIBED, groups),
                   changed_at=at, source=source)


def resend_unsubscribes(rules: Rules, plan: Plan,
                        rows: Iterable[tuple[str, str, frozenset[str], str]]
                        ) -> Iterator[Change]:
    """A resend's last pass: every unsubscribe crmsync knows (``(key, list, groups,
    email)`` rows in contact key order), one change per contact, for the configured
    lists, so an ESP restored from an old backup ends with none of them lost."""
    key: str | None = None
    email = ""
    subs: dict[str, Subscription] = {}
    for row_key, list_id, groups, row_email in rows:
        if row_key != key and subs:
            yield change(email, subscriptions=subs, source="crmsync:resend")
            subs = {}
        key, email = row_key, row_email
        if list_id in rules.mapper.by_list and (rules.only_lists is None
                                                or list_id in rules.only_lists):
            subs[list_id] = subscription(list_id, Status.UNSUBSCRIBED, groups,
                                         source="crmsync:resend")
            plan.count(list_id, "esp", "resend")
    if subs:
        yield change(email, subscriptions=subs, source="crmsync:resend")


def plan_repairs(rules: Rules, repairs: list[Repair]
                 ) -> list[tuple[list[Repair], Change]]:
    """The CRM writes that make it show the unsubscribes it missed, one per contact."""
    by_contact: dict[str, list[Repair]] = {}
    for item in repairs:
        if rules.mapper.to_crm(item.list_id, Status.UNSUBSCRIBED) is not None:
            by_contact.setdefault(item.key, []).append(item)
    out = []
    for items in by_contact.values():
        fields: dict[str, str | None] = {}
        memberships: dict[str, str | None] = {}
        for item in items:
            target = rules.mapper.to_crm(item.list_id, Status.UNSUBSCRIBED)
            assert target is not None
            fields.update(target[0])
            memberships.update(target[1])
        record = items[0].record
        out.append((items, Change(email=record.email, ids={rules.crm: record.ids[rules.crm]},
                                  fields=fields, memberships=memberships, source="crmsync",
                                  reason="the CRM was behind")))
    return out


def repaired(rules: Rules, items: list[Repair]) -> StateUpdate:
    """What a repair commits once the CRM took it."""
    first = items[0]
    return StateUpdate(first.key, [replace(i.snapshot, crm_status=Status.UNSUBSCRIBED,
                                           status=Status.UNSUBSCRIBED) for i in items], [
        JournalEntry(contact_key=i.key, email=i.record.email, list_id=i.list_id,
                     old_status=i.crm_view.value, new_status=Status.UNSUBSCRIBED.value,
                     applied_to="crm", source=i.snapshot.source or "crmsync",
                     reason="the CRM did not show an earlier unsubscribe", run_id=rules.run_id)
        for i in items])


# -- the ESP side: unsubscriptions and events, towards the CRM -----------------------------
def plan_esp_change(rules: Rules, plan: Plan, event: Change, origin: dict[str, Any] | None,
                    key: str, snaps: dict[tuple[str, str], Snapshot], crm_id: str | None,
                    view: dict[str, str | None] | None) -> None:
    """Decide one ESP-side change (an unsubscription read from the ESP, a webhook
    event, a cascade) against the contact's snapshots; ``snaps`` is updated so that a
    later change of the same contact in the same page sees this one. ``crm_id``: the
    CRM record crmsync knows for the contact; ``view``: the mapped fields last sent."""
    where = ((origin or {}).get("snapshot") or {}).get("where", "")
    cascade = event.source == "post_operation"
    origin_name = "post_operation" if cascade else f"esp:{rules.esp}"
    crm_known = crm_id is not None or bool(event.ids.get(rules.crm))
    fields: dict[str, str | None] = {}
    memberships: dict[str, str | None] = {}
    new_snaps: list[Snapshot] = []
    if_failed: list[Snapshot] = []
    journal: list[JournalEntry] = []
    applied: dict[str, Subscription] = {}
    for list_id, sub in event.subscriptions.items():
        if list_id not in rules.mapper.by_list:
            plan.failures.append(Failure(
                "crm", event.email, list_id,
                f"unknown ESP list id {list_id!r}: add a [[lists]] mapping with "
                f"esp_list = \"{list_id}\" or ignore this list", where))
            continue
        snap = snaps.get((key, list_id))
        if snap is None and cascade:
            continue  # a cascade only reaches lists the contact is on
        at = sub.changed_at or event.occurred_at
        # Only the ESP's own date may win a consent conflict: an undated event (a
        # replay, a webhook with no date) is never "newer" than an unsubscribe.
        decision = decide(snap.status if snap else None, snap.changed_at if snap else None,
                          sub.status, sub.changed_at, explicit=sub.explicit,
                          from_side="esp", policy=rules.policy)
        # The CRM is behind what crmsync knows (an earlier write failed): write again.
        # Only a contact the CRM holds, on a list it can record, can be behind: an ESP
        # address the CRM never had stays recorded in the state store, once.
        target = rules.mapper.to_crm(list_id, decision.status)
        behind = (not decision.apply and snap is not None and decision.status == snap.status
                  and snap.crm_status != snap.status and target is not None and crm_known)
        if not decision.apply and not behind:
            if decision.why != "unchanged":
                plan.consent_kept += 1
            continue
        if behind:
            assert snap is not None
            at = snap.changed_at
        written = target is not None and crm_known
        if target is not None and written:
            fields.update(target[0])
            memberships.update(target[1])
            plan.count(list_id, "crm", decision.status.value)
        groups = sub.groups or (snap.groups if snap else frozenset())
        new_snaps.append(Snapshot(
            contact_key=key, list_id=list_id, status=decision.status, groups=groups,
            crm_status=decision.status if written else (snap.crm_status if snap else None),
            hash=status_hash(decision.status, groups), changed_at=at, source=origin_name))
        if_failed.append(replace(new_snaps[-1], crm_status=snap.crm_status if snap else None))
        old = (snap.crm_status if behind else snap.status) if snap else None
        journal.append(JournalEntry(
            contact_key=key, email=event.email, list_id=list_id,
            old_status=old.value if old else None, new_status=decision.status.value,
            applied_to="crm" if written else "state", source=origin_name,
            reason=("written again after an earlier failure" if behind
                    else sub.reason or event.reason), event_id=event.event_id,
            run_id=rules.run_id, at=at))
        if not behind:
            applied[list_id] = sub.model_copy(update={"status": decision.status})
        snaps[(key, list_id)] = new_snaps[-1]
    # A profile change at the ESP (mapped fields) goes to the CRM too, for a contact the
    # CRM is known to hold; the fields view is updated with it so the CRM's next read
    # does not echo the same values back to the ESP.
    mapped = rules.mapper.fields.values()
    esp_fields = {name: value for name, value in event.fields.items() if name in mapped}
    update = StateUpdate(key, new_snaps, journal)
    if esp_fields and crm_id is not None and not cascade:
        fields.update(rules.mapper.crm_fields(esp_fields))
        if view is not None:
            update.fields_view = view | esp_fields
            update.fields_hash = content_hash(update.fields_view)
    send = None
    if fields or memberships:
        send = Change(email=event.email, ids={rules.crm: crm_id} if crm_id else dict(event.ids),
                      fields=fields, memberships=memberships, source=f"esp:{rules.esp}",
                      reason=event.reason, occurred_at=event.occurred_at,
                      event_id=event.event_id)
    if new_snaps or origin or send is not None:
        plan.decisions.append(ContactDecision(
            event.email, send, update, if_failed,
            event.model_copy(update={"subscriptions": applied}) if applied else None,
            origin))
