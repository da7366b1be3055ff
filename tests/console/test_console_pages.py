"""The console's pages and actions over real HTTP (issue 17 point 1): runs and their
reports, health, resync with its confirmation step, replay applied by the console
alone (`crmsync console`), and `crmsync console` itself."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.server.console.auth import password_matches

from .conftest import PASSWORD, Operator, eventually


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_resync_asks_first_then_runs_and_shows_its_run(console_pair) -> None:
    rt = console_pair()
    op = rt.operator()
    op.login()
    csrf = op.csrf()
    ask = op.post("/admin/resync", data={"csrf": csrf, "mode": "resend"})
    assert ask.status_code == 200 and "Confirm: a resend of everything" in ask.text
    assert "crmsync sync --resend" in ask.text
    time.sleep(0.3)
    assert [r["mode"] for r in rt.state.runs(10)] == ["realtime"]  # nothing started yet
    go = op.post("/admin/resync", data={"csrf": csrf, "mode": "resend", "confirm": "yes"})
    assert go.status_code == 303 and go.headers["location"] == "/admin/resync"
    batch = eventually(lambda: [r for r in rt.state.runs(10) if r["mode"] == "batch"
                                and r["status"] == "succeeded"], timeout=60, interval=0.2)
    [run] = batch
    assert run["stats"]["resend"] is True
    rows = eventually(lambda: (lambda t: "exit 0" in t and t)(op.get("/admin/resync/rows").text),
                      timeout=30, interval=0.2)
    assert "sync --resend" in rows and run["id"] in rows and "succeeded" in rows


def test_health_shows_both_sides_cursors_queues_and_last_runs(console_pair) -> None:
    rt = console_pair()
    rt.dead_letter()
    op = rt.operator()
    op.login()
    page = op.get("/admin/health")
    assert page.status_code == 200
    checks = re.sub(r"\s+", " ", re.search(r'<table id="checks">(.*?)</table>', page.text,
                                            re.S).group(1))
    assert "<td>crm</td><td>memory</td><td class=\"ok\">ok</td>" in checks
    assert "<td>esp</td><td>memory-esp</td><td class=\"ok\">ok</td>" in checks
    queues = re.search(r'<dl class="facts" id="queues">(.*?)</dl>', page.text, re.S).group(1)
    assert "dead</a>" not in queues and ">1</a>" in queues  # one dead letter, linked
    assert "running in this server" in queues
    assert "<td>crm</td>" in re.search(r'<table id="cursors">(.*?)</table>', page.text,
                                       re.S).group(1)


def test_a_run_report_is_served_only_from_the_report_folder(console_pair) -> None:
    rt = console_pair()
    op = rt.operator()
    op.login()
    report_dir = rt.config.path(rt.config.sync.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    good = report_dir / "failed-r1.csv"
    good.write_text("side,email,list,code,reason,where\ncrm,ann@example.com,1,,no,\n")
    outside = rt.tmp / "crmsync.toml"
    with rt.state.begin() as conn:
        from crmsync.state import schema

        for run_id, report in (("r1", str(good)), ("r2", str(outside)),
                               ("r3", str(report_dir / ".." / "crmsync.toml"))):
            conn.execute(schema.runs.insert().values(
                id=run_id, mode="batch", full=False, dry_run=False,
                started_at=rt.state.runs(1)[0]["started_at"], status="failed",
                stats={"report": report, "failed": 1}))
    got = op.get("/admin/runs/r1/report")
    assert got.status_code == 200 and got.text.startswith("side,email")
    for run_id in ("r2", "r3"):
        refused = op.get(f"/admin/runs/{run_id}/report")
        assert refused.status_code == 404 and "[state]" not in refused.text
    runs = op.get("/admin/runs").text
    assert 'href="/admin/runs/r1/report"' in runs


def test_console_alone_serves_and_applies_a_replayed_dead_letter(console_pair,
                                                                 tmp_path: Path) -> None:
    rt = console_pair()
    dead = rt.dead_letter("bob@example.com")
    rt.server.stop()  # no crmsync serve any more: the console applies what it replays
    rt.service.close()
    port = _free_port()
    env = {**os.environ, "CRMSYNC_CONSOLE_PASSWORD": PASSWORD}
    process = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "--config", str(tmp_path / "crmsync.toml"),
         "console", "--port", str(port)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        op = Operator(f"http://127.0.0.1:{port}")

        def up() -> bool:
            try:
                return op.http.get("/healthz").status_code == 200
            except OSError:
                return False
            except Exception:
                return False

        eventually(up, timeout=30, interval=0.2)
        assert op.http.get("/hooks/esp/x").status_code == 404  # the console only
        assert op.login().status_code == 303
        done = op.post("/admin/dead-letters/replay", data={"csrf": op.csrf(),
                                                           "one": str(dead["id"])})
        assert done.status_code == 303
        message = op.get(done.headers["location"]).text
        assert "being applied here" in message

        def applied() -> bool:
            rt.esp._load()  # written by the console's process
            return rt.esp_list("bob@example.com") == "unsubscribed"

        eventually(applied, timeout=30, interval=0.2)
        assert rt.state.runs(5)[0]["mode"] == "replay"
    finally:
        process.terminate()
        process.wait(15)
    assert b"crmsync console: http://127.0.0.1:" in process.stderr.read()


def test_console_without_a_password_says_what_to_set(tmp_path: Path, console_pair) -> None:
    console_pair(console=False).server.stop()
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "crmsync.toml"), "console"],
                                env={"CRMSYNC_CONSOLE_PASSWORD": "",
                                     "CRMSYNC_CONSOLE_PASSWORD_HASH": ""})
    assert result.exit_code == 2
    assert result.stderr.startswith("crmsync: error: no console password: set "
                                    "CRMSYNC_CONSOLE_PASSWORD_HASH")


def test_hash_password_prints_a_hash_the_console_takes(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["console", "--hash-password"],
                                input="a long enough secret\n")
    assert result.exit_code == 0, result.output
    stored = result.stdout.strip()
    assert stored.startswith("scrypt$16384$8$1$")
    assert password_matches("a long enough secret", stored)
    assert not password_matches("a long enough secreT", stored)
    short = CliRunner().invoke(cli, ["console", "--hash-password"], input="short\n")
    assert short.exit_code == 2 and "at least 12 characters" in short.stderr


def test_deep_links_by_crm_id_or_address(console_pair) -> None:
    rt = console_pair(esp_link="https://esp.example/recipients/{id}?mail={email}")
    op = rt.operator()
    op.login()
    bob_crm, bob_esp = rt.crm.by_email("bob@example.com"), rt.esp.by_email("bob@example.com")
    by_id = op.get(f"/go/esp?id={bob_crm}")
    assert by_id.status_code == 303
    assert by_id.headers["location"] == (
        f"https://esp.example/recipients/{bob_esp}?mail=bob@example.com")
    assert by_id.headers["referrer-policy"] == "no-referrer"
    assert op.get("/go/esp?email=Bob@Example.com").headers["location"] == \
        by_id.headers["location"]
    contact = op.get(f"/go/contact?id={bob_crm}")
    assert contact.headers["location"] == f"/admin/contact?q={bob_crm}"
    page = op.get(contact.headers["location"])
    assert '<h2 id="contact-email">bob@example.com</h2>' in page.text
    unknown = op.get("/go/esp?id=nobody-42")
    assert unknown.status_code == 404 and "has no console page" in unknown.text


def test_no_deep_link_without_the_esp_knowing_its_console(console_pair) -> None:
    rt = console_pair()
    op = rt.operator()
    op.login()
    answer = op.get("/go/esp?email=ann@example.com")
    assert answer.status_code == 404
    assert "set its console_recipient_url" in answer.text


def test_every_page_reads_sqlite_and_postgresql(db_url, console_pair) -> None:
    rt = console_pair(state=db_url)
    dead = rt.dead_letter("bob@example.com")
    op = rt.operator()
    op.login()
    for path in ("/admin/runs", "/admin/health", "/admin/dead-letters?origin=inbox&q=503",
                 "/admin/resync", "/admin/contact?q=bob@example.com"):
        page = op.get(path)
        assert page.status_code == 200, (path, page.text[:500])
    contact = op.get("/admin/contact?q=bob@example.com").text
    assert f'id="dead-{dead["id"]}"' in contact and "gave up after 2 attempts" in contact
    assert "bob@example.com" in op.get("/admin/dead-letters?origin=inbox&q=503").text
    assert "none" in op.get("/admin/dead-letters?origin=outbox").text


def test_replay_a_selection_then_all(console_pair) -> None:
    rt = console_pair()
    first = rt.dead_letter("ann@example.com")
    second = rt.dead_letter("bob@example.com")
    rt.service.esp.down_for.add("ann@example.com")  # Ann's outage goes on; Bob's is over
    rt.service.esp.down_for.discard("bob@example.com")
    op = rt.operator()
    op.login()
    page = op.get("/admin/dead-letters").text
    assert f'name="id" value="{first["id"]}"' in page and f'name="id" value="{second["id"]}"'
    nothing = op.post("/admin/dead-letters/replay", data={"csrf": op.csrf()})
    assert "Nothing chosen" in op.get(nothing.headers["location"]).text
    chosen = op.post("/admin/dead-letters/replay",
                     data={"csrf": op.csrf(), "id": [str(second["id"])]})
    assert "1 event(s) back in the inbox" in op.get(chosen.headers["location"]).text
    eventually(lambda: rt.esp_list("bob@example.com") == "unsubscribed")
    assert [d["id"] for d in rt.state.dead_letters()] == [first["id"]]
    rt.service.esp.down_for.clear()
    every = op.post("/admin/dead-letters/replay", data={"csrf": op.csrf(), "all": "1"})
    assert "1 event(s) back in the inbox" in op.get(every.headers["location"]).text
    eventually(lambda: rt.esp_list("ann@example.com") == "unsubscribed")
    assert rt.state.dead_letters() == []
    shown = op.get("/admin/dead-letters?replayed=1").text
    assert shown.count('<tr id="dead-') == 2 and shown.count('class="replayed"') == 2


def test_resync_of_one_list_runs_sync_with_that_list(console_pair) -> None:
    rt = console_pair()
    op = rt.operator()
    op.login()
    csrf = op.csrf()
    choose = op.get("/admin/resync")
    assert 'name="list"' in choose.text and "every list" in choose.text
    bad = op.post("/admin/resync", data={"csrf": csrf, "mode": "full", "list": "nope"})
    assert bad.status_code == 400
    ask = op.post("/admin/resync", data={"csrf": csrf, "mode": "full", "list": "1"})
    assert ask.status_code == 200 and "for list 1" in ask.text
    go = op.post("/admin/resync", data={"csrf": csrf, "mode": "full", "list": "1",
                                        "confirm": "yes"})
    assert go.status_code == 303
    rows = eventually(lambda: (lambda t: "exit 0" in t and t)(op.get("/admin/resync/rows").text),
                      timeout=60, interval=0.2)
    assert "sync --full --list 1" in rows and "succeeded" in rows
