"""Batch mode against real file servers nobody here wrote: vsftpd (plain FTP, and
explicit FTPS with force_local_data_ssl and require_ssl_reuse=YES) and OpenSSH's
internal-sftp, each on its own port on 127.0.0.1 (see real_servers.py).

What a user sees is asserted: the CLI's exit code and first line, the files on the
server, the CRM's records. Each fault is one the issue ran into on these servers: a
server that accepts and never answers, one stopped mid-upload, a replaced host key,
an export still being written, a full disk, an archive folder that cannot be written.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..core.conftest import Pair, write_config
from .real_servers import (
    PASSWORD,
    USER,
    HangUpServer,
    ServerRoot,
    SilentServer,
    Sshd,
    ThrottledProxy,
    Vsftpd,
    require,
    tls_files,
)
from .test_transports import _round_trip, _seed

KINDS = ["ftp", "ftps", "sftp"]


@pytest.fixture
def root():
    require("vsftpd")
    require("sshd")
    folder = ServerRoot()
    yield folder
    folder.close()


@pytest.fixture
def tls(tmp_path):
    with tls_files(tmp_path) as paths:
        yield paths


@pytest.fixture
def servers(root, tmp_path, tls):
    """start(kind, extra=...) -> a running vsftpd (ftp/ftps) or sshd (sftp)."""
    made: list[Any] = []

    def start(kind: str, *, extra: str = "") -> Any:
        daemon: Any
        if kind == "sftp":
            daemon = Sshd(root, tmp_path)
        else:
            daemon = Vsftpd(root, tmp_path, tls=kind == "ftps", certfile=tls["cert"],
                            keyfile=tls["key"], extra=extra)
        made.append(daemon)
        daemon.start()
        if kind == "sftp":
            (tmp_path / "known_hosts").write_text(daemon.known_hosts_line())
        return daemon

    yield start
    for daemon in made:
        daemon.stop()


@pytest.fixture(autouse=True)
def _password(monkeypatch):
    monkeypatch.setenv("CRMSYNC_FILES_PASSWORD", PASSWORD)


def configure(tmp_path: Path, kind: str, port: int, tls: dict[str, Path], *,
              folder: str = "space", timeout_s: float = 10, stable_s: float = 0) -> Path:
    url = f"{kind}://{USER}@127.0.0.1:{port}/{folder}/"
    path = write_config(tmp_path, space=url)
    lines = [f'url = "{url}"', f"timeout_s = {timeout_s}", f"stable_s = {stable_s}",
             f'known_hosts = "{tmp_path / "known_hosts"}"']
    if kind == "ftps":
        lines.append(f'ca_file = "{tls["ca"]}"')
    text = path.read_text()
    old = f'url = "{url}"\n' + next(line for line in text.splitlines()
                                     if line.startswith("stable_s = 0"))
    assert old in text
    path.write_text(text.replace(old, "\n".join(lines)))
    return path


def cli(config: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str],
                                                                   float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(config), *args],
                            capture_output=True, text=True, timeout=timeout, cwd=config.parent)
    return result, time.monotonic() - started


def first_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error's line: the first ``crmsync: error:`` line of stderr (progress lines,
    printed on stderr when it is not a terminal, come before it), else the first line."""
    lines = result.stderr.strip().splitlines() or [""]
    return next((line for line in lines if line.startswith("crmsync: error")), lines[0])


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def assert_manifests_match(folder: Path) -> None:
    manifests = sorted(folder.glob("*.manifest.json"))
    assert manifests
    for manifest in manifests:
        data = json.loads(manifest.read_text())
        body = (folder / data["file"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == data["sha256"]
        assert body.count(b"\n") == data["rows"] + 1  # the header


# -- the normal flow -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(kind, tmp_path, root, servers, tls) -> None:
    """Export, import, an unsubscribe back, archive: on FTPS this needs the data channel
    to resume the control channel's TLS session (vsftpd: require_ssl_reuse=YES)."""
    server = servers(kind)
    pair = Pair(tmp_path, configure(tmp_path, kind, server.port, tls))
    _seed(pair)
    _round_trip(pair, root.space)
    assert_manifests_match(root.space / "in" / "done")
    if kind != "sftp":  # one STOR per file, not one per 64 KiB block (a 300-byte file)
        stors = server.log.read_text().count('"STOR ')
        assert stors == 2, f"{stors} STOR for one file and its manifest"


# -- a server that accepts and never answers ------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_server_that_never_answers_fails_within_the_timeout(kind, tmp_path, tls) -> None:
    silent = SilentServer()
    try:
        (tmp_path / "known_hosts").write_text("")
        config = configure(tmp_path, kind, silent.port, tls, timeout_s=3)
        _seed(Pair(tmp_path, config))
        result, took = cli(config, "--json", "sync", timeout=90)
    finally:
        silent.close()
    assert result.returncode == 3, result.stderr
    assert took < 3 + 12, f"took {took:.1f} s with timeout_s = 3"
    assert "no answer from the server within 3 s ([files] timeout_s)" in first_line(result)
    error = json.loads(result.stdout)  # --json: the error object on stdout
    assert error["status"] == "failed" and error["exit_code"] == 3
    assert "within 3 s" in error["error"]
    # the file space was opened inside the run (holding the batch lock), so the run is
    # recorded as failed, not left out
    status, _ = cli(config, "--json", "status")
    runs = json.loads(status.stdout)["runs"]
    assert [r["status"] for r in runs] == ["failed"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_dropped_connection_is_said_in_words(kind, tmp_path, tls) -> None:
    """Python says ``EOFError: `` (no text) when a server hangs up."""
    server = HangUpServer()
    try:
        (tmp_path / "known_hosts").write_text("")
        config = configure(tmp_path, kind, server.port, tls, timeout_s=3)
        _seed(Pair(tmp_path, config))
        result, _ = cli(config, "sync", timeout=60)
    finally:
        server.close()
    assert result.returncode == 3
    assert "the server closed the connection" in first_line(result), result.stderr


# -- a server stopped in the middle of an upload --------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_server_stopped_mid_upload_fails_then_the_upload_recovers(kind, tmp_path, root,
                                                                    servers, tls) -> None:
    rate = 30_000  # bytes/s: slow enough to stop the server during the upload
    server = servers(kind, extra=f"local_max_rate={rate}\n")
    port = server.port
    proxy = None
    if kind == "sftp":  # sshd has no rate limit of its own
        proxy = ThrottledProxy(server.port, rate)
        port = proxy.port
        (tmp_path / "known_hosts").write_text(server.known_hosts_line(port))
    config = configure(tmp_path, kind, port, tls, timeout_s=3)
    pair = Pair(tmp_path, config)
    pair.crm.seed(1500)
    inbox = root.space / "in"
    process = subprocess.Popen([sys.executable, "-m", "crmsync", "--config", str(config),
                                "sync"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        parts = [p for p in inbox.glob(".*.part") if p.stat().st_size > 0]
        if parts:
            break
        time.sleep(0.01)
    assert process.poll() is None, f"the upload ended before it could be stopped: " \
                                   f"{process.communicate()}"
    frozen = server.freeze_sessions()
    stopped = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        server.thaw(frozen)
    took = time.monotonic() - stopped
    assert process.returncode == 3, stderr
    assert took < 3 + 10, f"took {took:.1f} s after the server stopped, timeout_s = 3"
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("crmsync: error")]
    assert len(errors) == 1 and "no answer from the server within 3 s" in errors[0], stderr
    # one error line; the rest are crmsync's own progress lines, no library's log lines
    assert all(line.startswith("crmsync: ") for line in lines), stderr
    assert not [n for n in visible(inbox) if n.endswith(".csv")], "a partial file is visible"
    # back at full speed, the next run uploads the staged file again, whole
    if proxy is not None:
        proxy.rate = 0
    else:
        server.stop()
        server.extra = ""
        server.start()
    result, _ = cli(config, "--json", "sync")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["recovered"] == 1
    assert_manifests_match(inbox)
    if proxy is not None:
        proxy.close()


# -- a replaced host key ---------------------------------------------------------------------
def test_sftp_refuses_an_unknown_or_replaced_host_key(tmp_path, root, servers, tls) -> None:
    server = servers("sftp")
    known_hosts = tmp_path / "known_hosts"
    config = configure(tmp_path, "sftp", server.port, tls)
    pair = Pair(tmp_path, config)
    _seed(pair)
    inbox = root.space / "in"

    known_hosts.write_text("")  # never seen: refused, and told how to trust it
    result, _ = cli(config, "sync")
    assert result.returncode == 3
    assert f"is not in {known_hosts}" in first_line(result)
    assert f"ssh-keyscan -p {server.port} 127.0.0.1 >> {known_hosts}" in first_line(result)
    assert visible(inbox) == []

    known_hosts.write_text(server.known_hosts_line())
    result, _ = cli(config, "sync")
    assert result.returncode == 0, result.stderr
    uploaded = visible(inbox)
    assert len(uploaded) == 2

    server.stop()
    server.new_host_key()  # someone else answers on the server's address
    server.start()
    log_before = server.log.read_text().count("Accepted password")
    pair.crm.add("cy@example.com", fields={"FirstName": "Cy", "OptOut": "false"})
    result, _ = cli(config, "sync")
    assert result.returncode == 3
    line = first_line(result)
    assert "presented a host key that differs from the one in" in line, line
    assert f"ssh-keygen -R '[127.0.0.1]:{server.port}' -f {known_hosts}" in line
    assert "ERROR" not in result.stderr  # paramiko's own log lines stay out
    assert visible(inbox) == uploaded  # nothing was sent
    assert server.log.read_text().count("Accepted password") == log_before  # nor the password


# -- an export the ESP is still writing ------------------------------------------------------
def _mailup_config(tmp_path: Path, emulator: Any, url: str, monkeypatch: Any) -> Path:
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    settings = {**profile["settings"], "rate_per_s": 0, "import_poll_s": 0.01}
    esp = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items()
                    if not isinstance(v, dict))
    path = tmp_path / "crmsync.toml"
    path.write_text(f"""
[state]
url = "sqlite:///state.db"

[crm]
connector = "memory"
[crm.settings]
path = "{tmp_path / 'crm.json'}"

[esp]
connector = "mailup"
mode = "files"
[esp.settings]
{esp}
field_ids = {{ name = 1, surname = 2 }}

[files]
url = "{url}"
timeout_s = 10
stable_s = 1
known_hosts = "{tmp_path / 'known_hosts'}"

[fields]
FirstName = "name"

[[lists]]
name = "Newsletter"
esp_list = "1"
members = "all"
opt_out = "OptOut"
""")
    return path


def test_an_export_still_being_written_is_not_read_in_part(tmp_path, root, servers, tls,
                                                           monkeypatch) -> None:
    """MailUp's export written slowly and in place (the emulator's slow mode): a run
    during the writing leaves it alone; nothing is lost, nothing archived early."""
    from crmsync.emulator import EmulatorServer
    from crmsync_mailup.emulator import MailUpEmulator

    server = servers("sftp")
    emulator = MailUpEmulator(rate_limit=0, files_dir=root.space)
    running = EmulatorServer(emulator).start()
    try:
        config = _mailup_config(tmp_path, emulator,
                                f"sftp://{USER}@127.0.0.1:{server.port}/space/", monkeypatch)
        pair = Pair(tmp_path, config)
        people = [f"p{n:02d}@example.com" for n in range(18)]
        for email in people:
            pair.crm.add(email, fields={"FirstName": email[:3], "OptOut": "false"})
        assert pair.sync().status == "succeeded"
        assert emulator.import_files()["imported"]
        with httpx.Client(base_url=emulator.base_url + "/_emulator", timeout=10) as control:
            for email in people:
                control.post("/unsubscribe", json={"email": email, "list": "1"}
                             ).raise_for_status()
        writer = threading.Thread(target=emulator.space.export_unsubscribers,
                                  kwargs={"row_delay_s": 0.3})
        writer.start()
        out = root.space / "out"
        while not [p for p in out.glob("unsubscribers-*.csv") if p.stat().st_size > 100]:
            time.sleep(0.02)
        during = pair.sync()  # while the ESP is still writing
        still_writing = writer.is_alive()
        writer.join()
        assert still_writing, "the export was finished before the run: the test saw nothing"
        assert during.files_archived == []
        assert len(visible(out)) == 1 and visible(root.space / "archive") == []
        after = pair.sync()
        assert after.status == "succeeded" and after.esp_unsubscribes_read == 18
        assert after.files_archived == visible(root.space / "archive")
        pair.crm._load()
        opted_out = sorted(r["email"] for r in pair.crm.records.values()
                           if r["fields"]["OptOut"] == "true")
        assert opted_out == people  # none lost
    finally:
        running.stop()


# -- a full disk -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ftp", "sftp"])
def test_a_full_disk_fails_clearly_and_the_next_run_recovers(kind, tmp_path, root, servers,
                                                             tls) -> None:
    disk = root.small_disk("small", 48)
    server = servers(kind)
    config = configure(tmp_path, kind, server.port, tls, folder="small")
    pair = Pair(tmp_path, config)
    pair.crm.seed(1500)  # an import file larger than the disk
    result, _ = cli(config, "sync")
    assert result.returncode == 3, result.stderr
    line = first_line(result)
    assert "full disk" in line, line
    assert visible(disk / "in") == [], "a partial file was left on the full disk"
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
    result, _ = cli(config, "--json", "sync")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["recovered"] == 1
    assert_manifests_match(disk / "in")


# -- an archive folder that cannot be written ------------------------------------------------
def test_an_archive_failure_is_reported_and_the_outbound_half_still_runs(tmp_path, root,
                                                                         servers, tls) -> None:
    server = servers("ftp")
    config = configure(tmp_path, "ftp", server.port, tls)
    pair = Pair(tmp_path, config)
    pair.space = root.space
    _seed(pair)
    assert pair.sync().status == "succeeded"
    pair.esp_import()
    pair.esp_unsubscribe("bob@example.com", export="unsubscribed-20260101.csv")
    pair.crm.add("cy@example.com", fields={"FirstName": "Cy", "OptOut": "false"})
    archive = root.space / "archive"
    os.chown(archive, 0, 0)  # the test user may no longer write there
    result, _ = cli(config, "--json", "sync")
    stats = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    assert stats["crm_written"] == 1 and stats["files_archived"] == []
    assert len(stats["files_uploaded"]) == 1  # cy went out all the same
    assert pair.crm_record("bob@example.com")["fields"]["OptOut"] == "true"
    report = Path(stats["report"]).read_text()
    assert "archiving unsubscribed-20260101.csv failed" in report
    assert visible(root.space / "out") == ["unsubscribed-20260101.csv"]
    os.chown(archive, *_test_user_ids())
    result, _ = cli(config, "--json", "sync")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files_archived"] == ["unsubscribed-20260101.csv"]
    assert visible(archive) == ["unsubscribed-20260101.csv"]


def _test_user_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


# -- clear messages ------------------------------------------------------------------------------
def test_an_untrusted_certificate_says_to_set_ca_file(tmp_path, root, servers, tls) -> None:
    server = servers("ftps")
    config = configure(tmp_path, "ftps", server.port, tls)
    config.write_text(config.read_text().replace(f'ca_file = "{tls["ca"]}"\n', ""))
    _seed(Pair(tmp_path, config))
    result, _ = cli(config, "sync")
    assert result.returncode == 3
    line = first_line(result)
    assert "certificate is not trusted" in line and "set [files] ca_file" in line, line
