"""Hostile input to the console (issue 17 point 1): no session, wrong passwords with a
lockout, forged CSRF, XSS from the CRM, redirects off-site, secrets on pages; and a
console that is not configured is not there. All over real HTTP."""

from __future__ import annotations

import time

from .conftest import CRM_SECRET, ESP_SECRET, PASSWORD, eventually

LOCKOUT = """
[console]
max_failures = 3
lockout_s = 1.0
"""


def test_an_unconfigured_console_is_not_mounted(console_pair) -> None:
    rt = console_pair(console=False)
    for path in ("/admin", "/admin/login", "/admin/runs", "/go/esp?email=a@b.c"):
        assert rt.http.get(path).status_code == 404, path
    assert rt.http.get("/healthz").status_code == 200


def test_no_session_no_page_and_no_action(console_pair) -> None:
    rt = console_pair()
    dead = rt.dead_letter()
    op = rt.operator()
    page = op.get("/admin/contact?q=bob@example.com")
    assert page.status_code == 303
    assert page.headers["location"] == (
        "/admin/login?next=%2Fadmin%2Fcontact%3Fq%3Dbob%40example.com")
    assert op.get("/go/esp?email=bob@example.com").status_code == 303
    refused = op.post("/admin/dead-letters/replay", data={"one": str(dead["id"])})
    assert refused.status_code == 401
    forged = op.http.get("/admin/runs", headers={"Cookie": "crmsync_console=made-up"})
    assert forged.status_code == 303 and forged.headers["location"].startswith("/admin/login")
    assert [d["id"] for d in rt.state.dead_letters()] == [dead["id"]]  # not replayed


def test_the_session_cookie_is_secure_httponly_strict(console_pair) -> None:
    rt = console_pair()
    op = rt.operator()
    answer = op.login(next_path="/admin/health")
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/health"
    [cookie] = [h for h in answer.headers.get_list("set-cookie")
                if h.startswith("crmsync_console=")]
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
    page = op.get("/admin/runs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert op.post("/admin/logout", data={"csrf": op.csrf()}).status_code == 303
    assert op.get("/admin/runs").status_code == 303  # the session is gone


def test_wrong_passwords_lock_the_address_out_for_a_while(console_pair) -> None:
    rt = console_pair(extra=LOCKOUT)
    op = rt.operator()
    for _ in range(3):
        wrong = op.login("guess")
        assert wrong.status_code == 401 and "Wrong password." in wrong.text
    started = time.monotonic()
    locked = op.login(PASSWORD)  # the right one, but too soon: not even checked
    assert locked.status_code == 429
    assert "Too many wrong passwords" in locked.text and int(locked.headers["retry-after"]) >= 1
    assert not op.session
    eventually(lambda: op.login(PASSWORD).status_code == 303, timeout=5, interval=0.2)
    assert time.monotonic() - started >= 0.9
    assert op.get("/admin/runs").status_code == 200
    # a wrong password after a success starts the count again: three more before a lock
    for _ in range(3):
        assert op.login("guess").status_code == 401
    assert op.login("guess").status_code == 429


def test_a_forged_form_post_changes_nothing(console_pair) -> None:
    rt = console_pair()
    dead = rt.dead_letter()
    op = rt.operator()
    assert op.login().status_code == 303
    no_token = op.post("/admin/dead-letters/replay", data={"one": str(dead["id"])})
    wrong_token = op.post("/admin/dead-letters/replay",
                          data={"one": str(dead["id"]), "csrf": "x" * 43})
    for answer in (no_token, wrong_token):
        assert answer.status_code == 403
        assert "was not sent from this console" in answer.text
    resync = op.post("/admin/resync", data={"mode": "full", "confirm": "yes"})
    assert resync.status_code == 403
    assert [d["id"] for d in rt.state.dead_letters()] == [dead["id"]]
    assert [r["mode"] for r in rt.state.runs(10)] == ["realtime"]  # no sync started
    # a login form without its own token is refused too (login CSRF)
    assert op.http.post("/admin/login", data={"password": PASSWORD}).status_code == 403


def test_a_name_from_the_crm_is_shown_as_text(console_pair) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    rt = console_pair(crm_fields={"eve@example.com": {"FirstName": evil}})
    op = rt.operator()
    op.login()
    page = op.get("/admin/contact?q=eve@example.com")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" \
        in page.text
    assert "<script>alert" not in page.text and "<img src=x" not in page.text


def test_no_page_shows_a_secret_and_redirects_stay_here(console_pair) -> None:
    rt = console_pair()
    op = rt.operator()
    assert op.login(next_path="//evil.example/x").headers["location"] == "/admin/runs"
    pages = [op.get(path).text for path in (
        "/admin/runs", "/admin/health", "/admin/contact?q=ann@example.com",
        "/admin/dead-letters", "/admin/resync")]
    for text in pages:
        for secret in (PASSWORD, ESP_SECRET, CRM_SECRET, "scrypt$"):
            assert secret not in text


def test_the_password_hash_comes_from_the_secrets_file_and_a_bad_one_is_refused(
        tmp_path) -> None:
    import pytest

    from crmsync.config import load_config
    from crmsync.errors import ConfigError
    from crmsync.runtime import open_store
    from crmsync.server.console import console_routes

    from .conftest import PASSWORD_HASH

    (tmp_path / ".crmsync.secrets").write_text(
        f"CRMSYNC_CONSOLE_PASSWORD_HASH={PASSWORD_HASH}\n")
    path = tmp_path / "crmsync.toml"
    path.write_text('secrets_file = ".crmsync.secrets"\n[state]\nurl = "sqlite:///s.db"\n')
    store = open_store(load_config(path, environ={}))
    try:
        assert console_routes(load_config(path, environ={}), store)  # mounted
        assert console_routes(load_config(path, environ={
            "CRMSYNC_CONSOLE_PASSWORD_HASH": ""}), store) == []  # the environment wins
        with pytest.raises(ConfigError, match="run `crmsync console --hash-password`"):
            console_routes(load_config(path, environ={
                "CRMSYNC_CONSOLE_PASSWORD_HASH": "scrypt$1$2$3$x$y"}), store)
    finally:
        store.close()
