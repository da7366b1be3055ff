"""The contract test-suite: mixin classes a connector's test file subclasses.

A connector author writes one class and overrides the fixtures::

    from crmsync.testing.contract import ConnectorContract

    class TestMyCrm(ConnectorContract):
        @pytest.fixture
        def connector(self):
            with MyCrm(MyCrm.Settings.load("mycrm", {...})) as c:
                yield c

        writable_field = "LastName"          # a field write() may set on a CRM
        list_id = "1"                          # a list id an ESP knows
        opt_out = ("HasOptedOutOfEmail", "true")  # a CRM's opt-out field and its value

        @pytest.fixture
        def vendor(self, emulator):            # the crmsync.emulator.Emulator behind it
            return emulator

        def sample_event(self, connector, email):  # push_events: a genuine event for email
            return InboundRequest(method="POST", path="/hooks/crm", body=...)

Tests are gated by the connector's declared :class:`~crmsync.contract.Capabilities`,
never by its name: a connector that declares ``incremental_read`` is held to it, and a
test that needs something the class does not give (``sample_event`` for a connector
that declares ``push_events``) fails saying what to add. What needs the vendor's
emulator (token expiry, 429, an outage) is skipped, visibly, when ``vendor`` is None.

The full read must come in several pages: configure the connector under test with a
small page size (2 to 5), so that paging and resuming are really exercised.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from ..contract import Connector, FileExchange, MessageSender, MultiListSubscriber
from ..errors import CrmsyncError, EventRejected, RemoteError
from ..model import (
    Change,
    Contact,
    Health,
    InboundRequest,
    MailingList,
    Page,
    Status,
    Subscription,
    WriteResult,
)

__all__ = ["ConnectorContract"]

_SECRET_WORDS = ("password", "secret", "token", "access_key", "private_key", "api_key")


class ConnectorContract:
    """Every connector passes these; capability-gated tests skip what it does not claim."""

    writable_field: str | None = None
    list_id: str | None = None
    #: a CRM's opt-out: the field write() sets and read() gives back, and its value
    opt_out: tuple[str, str] | None = None
    #: seconds the Retry-After of the injected 429 asks for
    retry_after_s: float = 1.0

    @pytest.fixture
    def vendor(self) -> Any:
        """The :class:`crmsync.emulator.Emulator` the connector talks to, or None."""
        return None

    @pytest.fixture
    def connector(self) -> Iterator[Connector]:
        raise NotImplementedError("override the `connector` fixture in your test class")

    # -- helpers a subclass may override ---------------------------------------------
    def new_email(self) -> str:
        return f"contract-{uuid.uuid4().hex[:10]}@example.com"

    def make_change(self, connector: Connector, email: str, value: str) -> Change:
        """A change that creates or updates ``email`` on this connector."""
        if connector.capabilities.kind == "esp":
            assert self.list_id, "set list_id on the test class"
            return Change(
                email=email,
                subscriptions={self.list_id: Subscription(
                    list_id=self.list_id, status=Status.SUBSCRIBED, explicit=True,
                    changed_at=datetime.now(UTC))},
                fields={self.writable_field: value} if self.writable_field else {},
                source="contract",
            )
        assert self.writable_field, "set writable_field on the test class"
        return Change(email=email, fields={self.writable_field: value}, source="contract")

    def sample_event(self, connector: Connector, email: str) -> InboundRequest:
        """A genuine event of the vendor about ``email`` (push_events connectors)."""
        pytest.fail(f"{type(connector).__name__} declares push_events: give the test class a "
                    "sample_event(connector, email) returning a genuine InboundRequest, so "
                    "the decode round trip is proven")

    def opt_out_change(self, connector: Connector, email: str) -> Change:
        """A change that opts ``email`` out (ESP: unsubscribed from list_id)."""
        if connector.capabilities.kind == "esp":
            assert self.list_id, "set list_id on the test class"
            return Change(email=email, source="contract", subscriptions={
                self.list_id: Subscription(list_id=self.list_id, status=Status.UNSUBSCRIBED,
                                           explicit=True, changed_at=datetime.now(UTC))})
        if self.opt_out is None:
            pytest.fail(f"{type(connector).__name__} writes: set opt_out = (field, value) on "
                        "the test class (the CRM's opt-out field), so an opt-out round trip "
                        "is proven")
        field, value = self.opt_out
        return Change(email=email, fields={field: value}, source="contract")

    def is_opted_out(self, connector: Connector, record: Contact) -> bool:
        if connector.capabilities.kind == "esp":
            assert self.list_id
            sub = record.subscriptions.get(self.list_id)
            return sub is not None and sub.status == Status.UNSUBSCRIBED
        assert self.opt_out is not None
        field, value = self.opt_out
        return str(record.fields.get(field)).lower() == value.lower()

    @staticmethod
    def record_key(record: Contact) -> tuple[Any, ...]:
        return (tuple(sorted(record.ids.items())) or record.email, record.email)

    def ensure_records(self, connector: Connector, count: int = 3) -> list[str]:
        """Write ``count`` new records (when the connector writes); their emails."""
        if not connector.capabilities.write:
            return []
        emails = [self.new_email() for _ in range(count)]
        results = connector.write([self.make_change(connector, e, "paged") for e in emails])
        assert all(r.ok for r in results), [r.error for r in results]
        return emails

    def need_vendor(self, vendor: Any, what: str) -> Any:
        if vendor is None:
            pytest.skip(f"no emulator given (override the `vendor` fixture): {what} is not "
                        "proven for this connector")
        return vendor

    def find(self, connector: Connector, email: str) -> Contact | None:
        for page in connector.read(None):
            for record in page.records:
                if record.email == email:
                    return record
        return None

    # -- the tests ---------------------------------------------------------------------
    def test_declares_identity(self, connector: Connector) -> None:
        cls = type(connector)
        assert cls.name and cls.name.replace("-", "").replace("_", "").isalnum()
        assert cls.capabilities.kind in ("crm", "esp")
        assert cls.Settings.model_config.get("extra") == "forbid"

    def test_secrets_are_secret_str(self, connector: Connector) -> None:
        for name, field in type(connector).Settings.model_fields.items():
            if any(word in name.lower() for word in _SECRET_WORDS):
                assert field.annotation in (SecretStr, SecretStr | None), (
                    f"setting {name!r} looks secret but is not a SecretStr"
                )

    def test_secrets_not_in_repr(self, connector: Connector) -> None:
        text = repr(connector.settings) + str(connector.settings.model_dump())
        for name in type(connector).Settings.secret_fields():
            value = getattr(connector.settings, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                assert value.get_secret_value() not in text

    def test_capability_interfaces_agree(self, connector: Connector) -> None:
        caps = connector.capabilities
        assert caps.file_exchange == isinstance(connector, FileExchange)
        assert caps.send_message == isinstance(connector, MessageSender)
        assert caps.multi_list_subscribe == isinstance(connector, MultiListSubscriber)

    def test_check(self, connector: Connector) -> None:
        health = connector.check()
        assert isinstance(health, Health)
        assert health.ok, health.detail

    def test_lists(self, connector: Connector) -> None:
        if not connector.capabilities.lists:
            pytest.skip("connector declares no lists")
        lists = connector.lists()
        assert all(isinstance(item, MailingList) for item in lists)
        assert len({item.id for item in lists}) == len(lists), "list ids must be unique"
        if self.list_id is not None:
            assert self.list_id in {item.id for item in lists}

    def test_full_read(self, connector: Connector) -> None:
        if not connector.capabilities.full_read:
            pytest.skip("connector declares no full read")
        previous = None
        for page in connector.read(None):
            assert isinstance(page, Page)
            assert all(isinstance(record, Contact) for record in page.records)
            if page.cursor is not None:
                if previous is not None:
                    assert page.cursor.key() >= previous.key(), "cursors must not go back"
                previous = page.cursor

    def test_write_one_result_per_change(self, connector: Connector) -> None:
        if not connector.capabilities.write:
            pytest.skip("connector declares no write")
        changes = [self.make_change(connector, self.new_email(), f"v{i}") for i in range(3)]
        results = connector.write(changes)
        assert len(results) == len(changes)
        assert all(isinstance(result, WriteResult) for result in results)
        assert all(result.ok for result in results), [r.error for r in results]
        assert connector.write([]) == []

    def test_write_then_read(self, connector: Connector) -> None:
        if not (connector.capabilities.write and connector.capabilities.full_read):
            pytest.skip("needs write and full read")
        email = self.new_email()
        [result] = connector.write([self.make_change(connector, email, "written")])
        assert result.ok, result.error
        found = self.find(connector, email)
        assert found is not None, f"{email} written but not read back"
        if self.writable_field and connector.capabilities.kind == "crm":
            assert found.fields.get(self.writable_field) == "written"

    def test_incremental_read_sees_new_write(self, connector: Connector) -> None:
        if not (connector.capabilities.incremental_read and connector.capabilities.write):
            pytest.skip("needs incremental read and write")
        cursor = None
        for page in connector.read(None):
            cursor = page.cursor or cursor
        email = self.new_email()
        [result] = connector.write([self.make_change(connector, email, "later")])
        assert result.ok, result.error
        seen = [r.email for page in connector.read(cursor) for r in page.records]
        assert email in seen, "a record written after the cursor must be read incrementally"

    def test_decode_event_rejects_garbage(self, connector: Connector) -> None:
        if not connector.capabilities.push_events:
            pytest.skip("connector receives no events")
        garbage = InboundRequest(method="POST", path="/", body=b"\x00\xff garbage <<<",
                                 headers={"content-type": "application/octet-stream"})
        with pytest.raises(EventRejected):
            connector.decode_event(garbage)

    def test_errors_are_crmsync_errors(self, connector: Connector) -> None:
        """Unknown changes may fail, but as results or CrmsyncErrors, never raw exceptions."""
        if not connector.capabilities.write:
            pytest.skip("connector declares no write")
        change = Change(email=self.new_email(), op="delete", ids={connector.name: "does-not-exist"})
        try:
            results = connector.write([change])
        except CrmsyncError:
            return
        assert len(results) == 1

    # -- what a production connector must survive -------------------------------------
    def test_full_read_comes_in_pages_without_duplicates(self, connector: Connector) -> None:
        if not connector.capabilities.full_read:
            pytest.skip("connector declares no full read")
        written = self.ensure_records(connector)
        pages = [page for page in connector.read(None) if page.records]
        records = [record for page in pages for record in page.records]
        assert len(pages) >= 2, (
            f"the full read of {len(records)} record(s) came in {len(pages)} page(s): give "
            "the connector under test a small page size so that paging is proven")
        keys = [self.record_key(record) for record in records]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        assert not twice, f"one full read yielded these records twice: {twice[:5]}"
        assert set(written) <= {record.email for record in records}, "a written record " \
            "is missing from the full read"
        expected = connector.full_read_count()
        if expected is not None:
            assert len(set(keys)) >= expected, "the full read yielded fewer records than " \
                "the vendor counts"

    def test_resume_from_a_page_cursor_loses_nothing(self, connector: Connector) -> None:
        if not (connector.capabilities.incremental_read and connector.capabilities.write):
            pytest.skip("needs incremental read and write")
        cursor = None
        for page in connector.read(None):
            cursor = page.cursor or cursor
        written = self.ensure_records(connector, 5)
        reading = connector.read(cursor)
        first = next(reading, None)
        close = getattr(reading, "close", None)
        if close is not None:
            close()  # the run stops after its first page (a crash, a kill)
        assert first is not None, "an incremental read after new writes yielded nothing"
        resumed = list(connector.read(first.cursor or cursor))
        # An incremental read may yield a record again (cursors are inclusive, reads
        # overlap, a CRM reports a membership change as the person again): the engine
        # applies them in order. "Nothing twice" is held on the full read above.
        seen = {r.email for r in first.records} | {r.email for page in resumed
                                                   for r in page.records}
        lost = sorted(set(written) - seen)
        assert not lost, f"resuming from the first page's cursor lost {lost}"

    def test_opt_out_is_written_and_read_back(self, connector: Connector) -> None:
        if not (connector.capabilities.write and connector.capabilities.full_read):
            pytest.skip("needs write and full read")
        email = self.new_email()
        [created] = connector.write([self.make_change(connector, email, "before")])
        assert created.ok, created.error
        [opted] = connector.write([self.opt_out_change(connector, email)])
        assert opted.ok, opted.error
        found = self.find(connector, email)
        assert found is not None, f"{email} written but not read back"
        assert self.is_opted_out(connector, found), f"the opt-out of {email} did not read " \
            f"back: {found.fields} {dict(found.subscriptions)}"

    def test_event_decode_round_trip(self, connector: Connector) -> None:
        if not connector.capabilities.push_events:
            pytest.skip("connector receives no events")
        email = self.new_email()
        self.ensure_records(connector, 0)
        if connector.capabilities.write:
            [result] = connector.write([self.make_change(connector, email, "evented")])
            assert result.ok, result.error
        changes = connector.decode_event(self.sample_event(connector, email))
        assert all(isinstance(change, Change) for change in changes)
        assert email in {change.email for change in changes}, (
            f"the sample event about {email} decoded to {[c.email for c in changes]}")

    def test_token_expiry_mid_run(self, connector: Connector, vendor: Any) -> None:
        if not connector.capabilities.full_read:
            pytest.skip("connector declares no full read")
        vendor = self.need_vendor(vendor, "a token expiring mid-run")
        written = self.ensure_records(connector)
        reading = connector.read(None)
        first = next(reading)
        vendor.expire_sessions()  # every token / session issued so far is dead
        emails = {r.email for r in first.records} | {r.email for page in reading
                                                     for r in page.records}
        assert set(written) <= emails, "records were lost when the token expired mid-run"
        if connector.capabilities.write:
            vendor.expire_sessions()
            [result] = connector.write([self.make_change(connector, self.new_email(), "x")])
            assert result.ok, result.error

    def test_rate_limited_with_and_without_retry_after(self, connector: Connector,
                                                       vendor: Any) -> None:
        if not connector.capabilities.full_read:
            pytest.skip("connector declares no full read")
        vendor = self.need_vendor(vendor, "a 429 answer")
        self.ensure_records(connector)
        baseline = {r.email for page in connector.read(None) for r in page.records}
        try:
            for retry_after in (self.retry_after_s, None):
                vendor.faults.update({"error_status": 429, "error_count": 1,
                                      "retry_after": retry_after})
                started = time.monotonic()
                again = {r.email for page in connector.read(None) for r in page.records}
                assert again == baseline, f"a 429 (Retry-After {retry_after}) lost records"
                assert vendor.faults.error_count == 0, "the injected 429 was never met"
                if retry_after is not None:
                    assert time.monotonic() - started >= retry_after * 0.9, \
                        "Retry-After was not honoured"
        finally:
            vendor.faults.clear()

    def test_vendor_outage_during_decode_is_a_remote_error(self, connector: Connector,
                                                            vendor: Any) -> None:
        if not connector.capabilities.push_events:
            pytest.skip("connector receives no events")
        vendor = self.need_vendor(vendor, "an outage during decode")
        email = self.new_email()
        if connector.capabilities.write:
            [result] = connector.write([self.make_change(connector, email, "outage")])
            assert result.ok, result.error
        request = self.sample_event(connector, email)
        vendor.faults.update({"error_status": 503, "error_rate": 1.0})
        try:
            changes = connector.decode_event(request)
        except RemoteError as exc:  # crmsync serve answers 503 + Retry-After
            assert exc.retryable, f"an outage must be retryable: {exc}"
        else:  # this decoder does not call the vendor
            assert email in {change.email for change in changes}
        finally:
            vendor.faults.clear()
