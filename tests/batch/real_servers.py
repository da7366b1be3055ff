"""Real file servers from Debian's packages, on 127.0.0.1, for tests and benchmarks.

``vsftpd`` (plain FTP, or explicit FTPS with ``force_local_data_ssl`` and
``require_ssl_reuse=YES``, vsftpd's defaults for TLS) and OpenSSH's ``sshd`` with
``internal-sftp``, each with its own generated configuration on its own high port,
serving a chrooted folder as the local user ``crmsync-test`` (password ``s3cret``).
``.ci/run`` installs the packages; the servers are started here, per test, so a test
can stop, restart or starve one. They need root (chroot, a local user, ``mount``):
without the packages or root the tests are skipped, except in CI (``CI=true``) where
that is a failure, as for PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

USER = "crmsync-test"
PASSWORD = "s3cret"  # a throw-away local test account
_BASE = Path("/srv/crmsync-tests")  # sshd's ChrootDirectory: every parent root-owned, 755


def unavailable(what: str) -> None:
    """Skip, or fail in CI, when a real server cannot run here."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"CI=true but {what}: .ci/run installs vsftpd and openssh-server and "
                    "runs the tests as root")
    pytest.skip(f"{what} (apt-get install vsftpd openssh-server, run as root)")


def require(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None:
        unavailable(f"{binary} is not installed")
    if os.geteuid() != 0:
        unavailable(f"{binary} needs root here (chroot, a local user)")
    _ensure_user()
    return str(path)


def _ensure_user() -> None:
    try:
        subprocess.run(["id", USER], check=True, capture_output=True)
        return
    except subprocess.CalledProcessError:
        pass
    # /bin/sh: vsftpd's PAM stack requires a shell listed in /etc/shells; sshd only
    # ever runs internal-sftp for this user (ForceCommand)
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(_BASE),
                    "--shell", "/bin/sh", USER], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True,
                   capture_output=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path,
              timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}: {log.read_text()[-2000:]}")


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (a server's per-connection processes)."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == parent:
                    found.append(int(entry.name))
                    frontier.append(int(entry.name))
    return found


class ServerRoot:
    """A chroot folder for both servers: ``<root>/space`` belongs to the test user."""

    def __init__(self) -> None:
        require("vsftpd")
        require("sshd")
        _BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(_BASE, 0o755)
        self.root = Path(tempfile.mkdtemp(prefix="root-", dir=_BASE))
        os.chmod(self.root, 0o755)
        self.space = self.root / "space"
        self.mounts: list[Path] = []
        self.mkdir("space", "space/in", "space/out", "space/archive")

    def mkdir(self, *names: str) -> None:
        for name in names:
            path = self.root / name
            path.mkdir(parents=True, exist_ok=True)
            shutil.chown(path, USER, USER)

    def small_disk(self, name: str, size_kib: int) -> Path:
        """A tmpfs of ``size_kib`` KiB mounted at ``<root>/<name>`` (a disk that fills)."""
        path = self.root / name
        path.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs",
                        str(path)], check=True, capture_output=True)
        self.mounts.append(path)
        self.mkdir(name, f"{name}/in", f"{name}/out", f"{name}/archive")
        return path

    def close(self) -> None:
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


class _Daemon:
    process: subprocess.Popen[bytes] | None = None
    port = 0
    log: Path

    def stop(self) -> None:
        if self.process is None:
            return
        for pid in children(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def freeze_sessions(self) -> list[int]:
        """SIGSTOP every connection's process: a server stopped mid-transfer."""
        assert self.process is not None
        pids = children(self.process.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


class Vsftpd(_Daemon):
    """vsftpd 3.0.x; ``tls``: explicit FTPS as the issue ran it (TLS required on both
    channels, the data channel's TLS session must reuse the control channel's)."""

    def __init__(self, root: ServerRoot, workdir: Path, *, tls: bool = False,
                 certfile: Path | None = None, keyfile: Path | None = None,
                 extra: str = "") -> None:
        self.binary = require("vsftpd")
        self.root = root
        self.workdir = workdir
        self.tls = tls
        self.certfile, self.keyfile = certfile, keyfile
        self.extra = extra
        self.log = workdir / "vsftpd.log"

    def start(self) -> int:
        self.port = self.port or free_port()
        tls = ""
        if self.tls:
            tls = (f"ssl_enable=YES\nrsa_cert_file={self.certfile}\n"
                   f"rsa_private_key_file={self.keyfile}\nforce_local_logins_ssl=YES\n"
                   "force_local_data_ssl=YES\nrequire_ssl_reuse=YES\nssl_ciphers=HIGH\n")
        config = self.workdir / f"vsftpd-{self.port}.conf"
        config.write_text(
            f"listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={self.port}\n"
            "background=NO\nanonymous_enable=NO\nlocal_enable=YES\nwrite_enable=YES\n"
            f"local_umask=022\nchroot_local_user=YES\nallow_writeable_chroot=YES\n"
            f"local_root={self.root.root}\npam_service_name=vsftpd\nuserlist_enable=NO\n"
            "seccomp_sandbox=NO\nisolate=NO\nisolate_network=NO\n"
            "secure_chroot_dir=/var/run/vsftpd/empty\n"
            f"xferlog_enable=YES\nvsftpd_log_file={self.log}\nlog_ftp_protocol=YES\n"
            f"{tls}{self.extra}\n")
        Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
        self.log.touch()
        self.process = subprocess.Popen([self.binary, str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.process, self.log)
        return self.port


class Sshd(_Daemon):
    """OpenSSH's sshd: ``internal-sftp`` only, the test user chrooted to the root."""

    def __init__(self, root: ServerRoot, workdir: Path) -> None:
        self.binary = require("sshd")
        self.root = root
        self.workdir = workdir
        self.log = workdir / "sshd.log"
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.new_host_key()

    def new_host_key(self) -> None:
        """A fresh host key (the server's key replaced); takes effect on start()."""
        for path in (self.host_key, self.host_key.with_suffix(".pub")):
            path.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
                       check=True, capture_output=True)

    def known_hosts_line(self, port: int | None = None) -> str:
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{port or self.port} {kind} {key}\n"

    def start(self) -> int:
        self.port = self.port or free_port()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        config = self.workdir / f"sshd-{self.port}.conf"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {self.workdir / 'sshd.pid'}\nUsePAM no\nPasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\nStrictModes no\n"
            "PermitRootLogin no\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n"
            f"AllowUsers {USER}\n"
            f"Match User {USER}\n  ChrootDirectory {self.root.root}\n"
            "  ForceCommand internal-sftp\n  AllowTcpForwarding no\n  X11Forwarding no\n")
        self.log.touch()
        self.process = subprocess.Popen([self.binary, "-D", "-e", "-f", str(config)],
                                        stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("ab"))
        wait_port(self.port, self.process, self.log)
        return self.port


class SilentServer:
    """A socket that accepts connections and never says a word (a hung server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


class HangUpServer:
    """A socket that accepts each connection and closes it at once (a dropped connection)."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                conn.close()

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def tls_files(folder: Path) -> Iterator[dict[str, Path]]:
    """A throw-away CA and a certificate for 127.0.0.1 (vsftpd's and the client's)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    yield paths


class ThrottledProxy:
    """A TCP relay to ``127.0.0.1:target`` passing at most ``rate`` bytes a second from
    the client: an upload slow enough to stop the server in the middle of it."""

    def __init__(self, target: int, rate: int) -> None:
        import threading

        self.target = target
        self.rate = rate
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.closed = False
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for source, sink, limited in ((client, upstream, True), (upstream, client, False)):
                self._threading.Thread(target=self._pump, args=(source, sink, limited),
                                       daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, limited: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(max(1024, self.rate // 20) if limited else 65536):
                sink.sendall(data)
                if limited and self.rate:  # the rate may be lifted meanwhile
                    time.sleep(len(data) / self.rate)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
