"""The hosted multi-list subscription form: one page, a checkbox per configured list.

The page is plain HTML with no script and a strict Content-Security-Policy; every
value written into it is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import parse_qsl

from ..config import ListMapping
from ..model import normalize_email

__all__ = ["FORM_HEADERS", "FormInput", "parse_form", "render_done", "render_form"]

FORM_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;"
          "padding:0 1rem}label{display:block;margin:.4rem 0}.error{color:#a00}"
          "input[type=email]{width:100%;padding:.4rem}button{margin-top:1rem;padding:.4rem 1rem}")


@dataclass
class FormInput:
    """What a POST carried, validated: the address, the lists, and what was wrong."""

    email: str = ""
    lists: list[str] = field(default_factory=list)
    token: str = ""
    errors: list[str] = field(default_factory=list)


def parse_form(body: bytes, allowed: Sequence[str]) -> FormInput:
    """Read an urlencoded POST; ``errors`` says what to fix, in words for the person."""
    result = FormInput()
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        result.errors.append("The form could not be read. Please try again.")
        return result
    raw_email = ""
    for name, value in pairs:
        if name == "email":
            raw_email = value.strip()
        elif name == "list":
            result.lists.append(value)
        elif name == "csrf_token":
            result.token = value
    result.email = raw_email[:320]
    try:
        result.email = normalize_email(raw_email) if len(raw_email) <= 320 else ""
        if not result.email:
            raise ValueError(raw_email)
    except ValueError:
        result.errors.append("Please enter a valid email address.")
    unknown = [item for item in result.lists if item not in allowed]
    result.lists = [item for item in dict.fromkeys(result.lists) if item in allowed]
    if unknown:
        result.errors.append("Please choose among the lists shown.")
    elif not result.lists:
        result.errors.append("Please choose at least one list.")
    return result


def render_form(title: str, lists: Sequence[ListMapping], token: str, *,
                errors: Sequence[str] = (), email: str = "",
                checked: Sequence[str] = ()) -> str:
    boxes = "\n".join(
        f'<label><input type="checkbox" name="list" value="{escape(item.esp_list)}"'
        f'{" checked" if item.esp_list in checked else ""}> {escape(item.name)}</label>'
        for item in lists)
    problems = "".join(f'<p class="error" role="alert">{escape(e)}</p>' for e in errors)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{escape(title)}</h1>{problems}
<form method="post" action="/subscribe" id="subscribe">
<input type="hidden" name="csrf_token" value="{escape(token)}">
<label for="email">Email address</label>
<input type="email" id="email" name="email" required maxlength="320" autocomplete="email"
 value="{escape(email)}">
<fieldset><legend>Lists</legend>
{boxes}
</fieldset>
<button type="submit">Subscribe</button>
</form></body></html>
"""


def render_done(title: str, email: str, names: Sequence[str], *, confirm: bool) -> str:
    listed = ", ".join(escape(name) for name in names)
    if confirm:
        message = (f"Thank you. We sent a confirmation email to <b>{escape(email)}</b>: "
                   f"click its link to start receiving {listed}.")
    else:
        message = f"Thank you. <b>{escape(email)}</b> is subscribed to {listed}."
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{_STYLE}</style></head>
<body><h1>{escape(title)}</h1><p id="result">{message}</p></body></html>
"""
