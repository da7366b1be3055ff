"""The README's "Use it" block, run in order as written, on the emulators it starts
(issue 12, "Done when").

The commands are taken from the README itself. Only what a shared test machine needs
changes: free ports instead of 8443 / 8081 / 8080, and 10 contacts per emulator instead
of 100 (`--contacts 10` added to `crmsync emulate`), so the run takes seconds. Every
command must exit 0; background ones (`&`) must come up and are stopped at the end.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def use_it_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use it", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited {process.returncode}: "
                                 f"{process.stderr.read() if process.stderr else b''!r}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def test_the_readme_block_covers_the_tour() -> None:
    commands = use_it_commands()
    assert commands[0].startswith("crmsync emulate")
    assert any("init" in c and "--emulator" in c for c in commands)
    assert any(c.endswith("sync --full --json") for c in commands)
    assert any("serve" in c for c in commands) and commands[-1].startswith("crmsync replay")


@pytest.mark.timeout(600)
def test_the_readme_use_it_commands_run_in_order(tmp_path: Path) -> None:
    crmsync = shutil.which("crmsync", path=str(Path(sys.executable).parent))
    assert crmsync, "the crmsync script of this venv"
    ports = {"8443": str(free_port()), "8081": str(free_port()), "8080": str(free_port())}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env["CRMSYNC_CONNECTORS"] = "salesforce,mailup"
    background: list[subprocess.Popen[bytes]] = []
    ran: list[str] = []
    try:
        for command in use_it_commands():
            for old, new in ports.items():
                command = re.sub(rf"\b{old}\b", new, command)
            if command.startswith("export "):
                for pair in shlex.split(command)[1:]:
                    key, _, value = pair.partition("=")
                    env[key] = value
                continue
            detach = command.endswith("&")
            argv = shlex.split(command.rstrip("&").strip())
            assert argv[0] == "crmsync", command
            argv[0] = crmsync
            if argv[1] == "emulate":
                argv += ["--contacts", "10"]
            if detach:
                process = subprocess.Popen(argv, cwd=tmp_path, env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                background.append(process)
                port = next(p for p in ports.values() if p in argv)
                probe = "/healthz" if "serve" in argv else "/_emulator/state"
                wait_for(f"http://127.0.0.1:{port}{probe}", process)
                ran.append(command)
                continue
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True,
                                  timeout=300)
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
            assert b"Traceback" not in done.stderr, command
            ran.append(command)
    finally:
        for process in background:
            process.terminate()
        for process in background:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
    assert len(ran) >= 12
