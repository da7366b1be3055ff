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

Tests are gated by the connector's declared :class:`~crmsync.contract.Capabilities`,
never by its name: a connector that declares ``incremental_read`` is held to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from ..contract import Connector, FileExchange, MessageSender, MultiListSubscriber
from ..errors import CrmsyncError, EventRejected
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
