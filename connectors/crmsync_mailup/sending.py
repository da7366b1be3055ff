"""Sending from an application: an existing message to one address, a list or a group
(console REST API), and one-to-one mail through the Transactional API (no OAuth:
SMTP+ credentials in the body; success means ``Code == "0"``)."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from crmsync.errors import ConfigError, RemoteError
from crmsync.model import SendResult, normalize_email

from .client import MailUpClient
from .settings import MailUpSettings

__all__ = ["Address", "MailUpSender", "TransactionalMessage"]


class Address(BaseModel):
    """A name and an address."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    email: str
    name: str = ""


class TransactionalMessage(BaseModel):
    """One message for the Transactional API."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    subject: str
    sender: Address
    to: list[Address]
    html: str = ""
    text: str = ""
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    reply_to: str | None = None
    charset: str = "utf-8"
    headers: dict[str, str] = Field(default_factory=dict)


def _addresses(items: list[Address]) -> list[dict[str, str]]:
    return [{"Name": a.name, "Email": a.email} for a in items]


class MailUpSender:
    """Sends through the console API (``POST /Console/Email/Send`` and list/group sends)."""

    def __init__(self, settings: MailUpSettings, client: MailUpClient) -> None:
        self.settings = settings
        self.client = client

    def send(self, message_id: str, *, to: str | None = None, list_id: str | None = None,
             group_id: str | None = None) -> SendResult:
        if sum(x is not None for x in (to, list_id, group_id)) != 1:
            raise ConfigError("send to exactly one of: to=<address>, list_id=, group_id=")
        if not str(message_id).isdigit():
            raise ConfigError(f"MailUp message ids are numbers, got {message_id!r}")
        if to is not None:
            body = self.client.call("POST", "Email/Send", json={
                "Email": normalize_email(to), "idMessage": int(message_id), "Fields": []})
        elif list_id is not None:
            body = self.client.call("POST", f"List/{list_id}/Email/{message_id}/Send")
        else:
            body = self.client.call("POST", f"Group/{group_id}/Email/{message_id}/Send")
        return _send_result(message_id, body)

    def send_transactional(self, message: TransactionalMessage) -> SendResult:
        user = self.settings.transactional_username
        secret = self.settings.transactional_secret
        if not user or secret is None or not secret.get_secret_value():
            raise ConfigError("the Transactional API needs transactional_username (an SMTP+ "
                              "user sNNNNN_NN) and CRMSYNC_MAILUP_TRANSACTIONAL_SECRET")
        payload: dict[str, Any] = {
            "Subject": message.subject, "Html": {"Body": message.html}, "Text": message.text,
            "From": {"Name": message.sender.name, "Email": message.sender.email},
            "To": _addresses(message.to), "Cc": _addresses(message.cc),
            "Bcc": _addresses(message.bcc), "ReplyTo": message.reply_to,
            "CharSet": message.charset,
            "ExtendedHeaders": [{"N": k, "V": v} for k, v in message.headers.items()],
            "User": {"Username": user, "Secret": secret.get_secret_value()},
        }
        try:
            response = self.client.http.post(self.settings.transactional_url, json=payload)
        except httpx.HTTPError as exc:
            raise RemoteError(f"MailUp Transactional API unreachable ({type(exc).__name__}): "
                              "check transactional_url", retryable=True) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = str(body.get("Code", response.status_code)) if isinstance(body, dict) else ""
        if response.status_code >= 300 or code != "0":
            detail = body.get("Message") if isinstance(body, dict) else None
            raise RemoteError(f"MailUp Transactional API refused the message: code {code} "
                              f"{detail or ''}".rstrip() + ": check the SMTP+ user and sender",
                              status=response.status_code, code=code,
                              retryable=response.status_code >= 500)
        return SendResult(ok=True, message_id=str(body.get("Message") or ""),
                          recipients=len(message.to) + len(message.cc) + len(message.bcc),
                          detail=str(body.get("Status", "done")))


def _send_result(message_id: str, body: Any) -> SendResult:
    if not isinstance(body, dict):
        raise RemoteError(f"MailUp send of message {message_id} answered without a result")
    sent = int(body.get("Sent") or 0)
    invalid = body.get("InvalidRecipients") or []
    unprocessed = body.get("UnprocessedRecipients") or []
    problems = []
    if invalid:
        problems.append(f"{len(invalid)} invalid")
    if unprocessed:
        problems.append(f"{len(unprocessed)} unprocessed")
    return SendResult(ok=not invalid and not unprocessed, message_id=str(message_id),
                      recipients=sent, detail=", ".join(problems))
