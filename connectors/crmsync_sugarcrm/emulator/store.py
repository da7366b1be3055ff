"""The emulator's one store, shared by the REST v11 and the legacy v4_1 APIs.

Person records (Contacts, Leads, Prospects) link to EmailAddresses rows; the opt-out
belongs to the address row, so it is shared by every record with that address, and
changing it does not touch the records' ``date_modified``. Target lists (ProspectLists)
hold members per module. Stamps are whole seconds, as in Sugar's database.
"""

from __future__ import annotations

import bisect
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "PERSON_MODULES",
    "Address",
    "EmailLink",
    "Person",
    "SugarStore",
    "TableError",
    "TargetList",
    "stamp",
]

PERSON_MODULES = ("Contacts", "Leads", "Prospects")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class TableError(ValueError):
    """An address that Sugar would refuse, or an unknown module."""


def stamp(value: datetime) -> str:
    """The database form of a stamp (v4_1 shows it as is)."""
    return value.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Address:
    id: str
    email: str
    opt_out: bool = False
    invalid: bool = False
    date_created: datetime = field(default_factory=lambda: datetime.now(UTC))
    date_modified: datetime = field(default_factory=lambda: datetime.now(UTC))
    deleted: bool = False

    @property
    def caps(self) -> str:
        return self.email.upper()


@dataclass
class EmailLink:
    address_id: str
    primary: bool = False
    reply_to: bool = False
    deleted: bool = False
    id: str = ""


@dataclass
class Person:
    module: str
    id: str
    fields: dict[str, Any]
    date_modified: datetime
    date_entered: datetime
    deleted: bool = False
    links: list[EmailLink] = field(default_factory=list)

    def live_links(self) -> list[EmailLink]:
        return [link for link in self.links if not link.deleted]


@dataclass
class Membership:
    date_modified: datetime
    deleted: bool = False
    id: str = ""


@dataclass
class TargetList:
    id: str
    name: str
    list_type: str = "default"
    date_modified: datetime = field(default_factory=lambda: datetime.now(UTC))
    deleted: bool = False
    members: dict[str, dict[str, Membership]] = field(default_factory=dict)

    def live(self, module: str) -> list[str]:
        return [key for key, row in self.members.get(module, {}).items() if not row.deleted]


class SugarStore:
    """Records, addresses and target lists, with the indexes both APIs need."""

    new_addresses_opted_out = False  # sugar_config['new_email_addresses_opted_out']

    def __init__(self) -> None:
        self.people: dict[str, dict[str, Person]] = {module: {} for module in PERSON_MODULES}
        self.addresses: dict[str, Address] = {}
        self.by_caps: dict[str, str] = {}
        self.holders: dict[str, set[tuple[str, str]]] = {}
        self.lists: dict[str, TargetList] = {}
        self._sorted: dict[str, list[tuple[datetime, str]]] = {}
        self._rng = random.Random(0)
        self._last = datetime(2000, 1, 1, tzinfo=UTC)

    # -- clock and ids -------------------------------------------------------------------
    def now(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    # -- addresses ---------------------------------------------------------------------
    def address(self, email: str, *, create: bool = True) -> Address | None:
        email = email.strip()
        if not _EMAIL.match(email):
            raise TableError(f"{email} is an invalid email address")
        found = self.by_caps.get(email.upper())
        if found is not None:
            return self.addresses[found]
        if not create:
            return None
        now = self.now()
        row = Address(id=self.new_id(), email=email, opt_out=self.new_addresses_opted_out,
                      date_created=now, date_modified=now)
        self.addresses[row.id] = row
        self.by_caps[row.caps] = row.id
        return row

    def set_opt_out(self, address: Address, value: bool) -> None:
        if address.opt_out != value:
            address.opt_out = value
            address.date_modified = self.now()

    def addresses_of(self, person: Person) -> list[tuple[EmailLink, Address]]:
        return [(link, self.addresses[link.address_id]) for link in person.live_links()]

    def primary(self, person: Person) -> Address | None:
        pairs = self.addresses_of(person)
        for link, row in pairs:
            if link.primary:
                return row
        return pairs[0][1] if pairs else None

    def _link(self, person: Person, links: list[EmailLink]) -> None:
        for link in person.links:
            self.holders.get(link.address_id, set()).discard((person.module, person.id))
        person.links = links
        for link in links:
            if not link.deleted:
                self.holders.setdefault(link.address_id, set()).add((person.module, person.id))

    def replace_addresses(self, person: Person, entries: list[dict[str, Any]]) -> None:
        """REST semantics: the array is the whole set; unspecified flags are merged from
        the stored address; omitted addresses are unlinked."""
        links: list[EmailLink] = []
        seen: set[str] = set()
        for entry in entries:
            row = self.address(str(entry.get("email_address") or ""))
            assert row is not None
            if row.id in seen:
                continue
            seen.add(row.id)
            if "opt_out" in entry:
                self.set_opt_out(row, bool(entry["opt_out"]))
            if "invalid_email" in entry:
                row.invalid = bool(entry["invalid_email"])
            old = next((link for link in person.live_links() if link.address_id == row.id),
                       None)
            links.append(EmailLink(
                address_id=row.id, id=old.id if old else self.new_id(),
                primary=bool(entry.get("primary_address", old.primary if old else False)),
                reply_to=bool(entry.get("reply_to_address",
                                        old.reply_to if old else False))))
        if links and not any(link.primary for link in links):
            links[0].primary = True
        dropped = [EmailLink(address_id=link.address_id, id=link.id, primary=link.primary,
                             deleted=True) for link in person.links
                   if link.address_id not in seen]
        self._link(person, links + dropped)

    def set_email1(self, person: Person, email: str) -> None:
        """v4_1 semantics: ``email1`` is the primary address; the others are kept."""
        row = self.address(email)
        assert row is not None
        links = [link for link in person.links if link.address_id != row.id]
        for link in links:
            if link.primary and not link.deleted:
                link.deleted = True
        links.insert(0, EmailLink(address_id=row.id, primary=True, id=self.new_id()))
        self._link(person, links)

    # -- people ------------------------------------------------------------------------
    def module(self, name: str) -> dict[str, Person]:
        if name not in self.people:
            raise TableError(name)
        return self.people[name]

    def create(self, module: str, fields: dict[str, Any], *, record_id: str | None = None,
               at: datetime | None = None) -> Person:
        now = at or self.now()
        person = Person(module=module, id=record_id or self.new_id(), fields=dict(fields),
                        date_modified=now, date_entered=now)
        self.module(module)[person.id] = person
        self.touch(person, now)
        return person

    def touch(self, person: Person, at: datetime | None = None) -> None:
        person.date_modified = at or self.now()
        self._sorted.pop(person.module, None)

    def delete(self, person: Person) -> None:
        person.deleted = True
        # Deleting a bean deletes its links: the address link and list memberships.
        for link in person.links:
            link.deleted = True
        self._link(person, person.links)
        for target in self.lists.values():
            row = target.members.get(person.module, {}).get(person.id)
            if row is not None and not row.deleted:
                row.deleted, row.date_modified = True, self.now()
        self.touch(person)

    def ordered(self, module: str) -> list[tuple[datetime, str]]:
        """``(date_modified, id)`` of every record of ``module``, sorted (cached)."""
        keys = self._sorted.get(module)
        if keys is None:
            keys = sorted((p.date_modified, p.id) for p in self.people[module].values())
            self._sorted[module] = keys
        return keys

    def ordered_from(self, module: str, lower: datetime | None) -> list[tuple[datetime, str]]:
        keys = self.ordered(module)
        if lower is None:
            return keys
        return keys[bisect.bisect_left(keys, (lower, "")):]

    def holders_of(self, address_id: str) -> list[Person]:
        return [self.people[module][pid] for module, pid in
                sorted(self.holders.get(address_id, set()))]

    # -- target lists ------------------------------------------------------------------
    def add_member(self, target: TargetList, module: str, record_id: str) -> bool:
        rows = target.members.setdefault(module, {})
        row = rows.get(record_id)
        if row is not None and not row.deleted:
            return False
        rows[record_id] = Membership(date_modified=self.now(), id=self.new_id())
        return True

    def remove_member(self, target: TargetList, module: str, record_id: str) -> bool:
        row = target.members.get(module, {}).get(record_id)
        if row is None or row.deleted:
            return False
        row.deleted, row.date_modified = True, self.now()
        return True

    def memberships(self, module: str, record_id: str) -> list[str]:
        return [target.id for target in self.lists.values()
                if record_id in target.live(module)]

    # -- seeding -----------------------------------------------------------------------
    def seed(self, contacts: int, seed: int, *, target_list: TargetList | None) -> None:
        rng = random.Random(seed)
        interests = ["news", "events", "offers", "tech"]
        first = ["Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Grace", "Heidi"]
        base = self.now() - timedelta(seconds=contacts + 60)
        for number in range(contacts):
            at = base + timedelta(seconds=number)
            person = self.create("Contacts", {
                "first_name": rng.choice(first), "last_name": f"Seed{seed}-{number}",
                "interests_c": sorted(rng.sample(interests, rng.randint(0, 2))),
            }, at=at)
            row = self.address(f"contact{seed}-{number}@example.com")
            assert row is not None
            row.date_created = row.date_modified = at
            row.opt_out = rng.random() < 0.1
            links = [EmailLink(address_id=row.id, primary=True, id=self.new_id())]
            if number % 5 == 0:
                other = self.address(f"contact{seed}-{number}@work.example.org")
                assert other is not None
                other.date_created = other.date_modified = at
                links.append(EmailLink(address_id=other.id, id=self.new_id()))
            self._link(person, links)
            if target_list is not None and number % 3 == 0:
                target_list.members.setdefault("Contacts", {})[person.id] = Membership(
                    date_modified=at, id=self.new_id())
