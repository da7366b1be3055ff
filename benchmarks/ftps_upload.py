"""FTPS upload benchmark: crmsync's file space against ``curl -T --ssl-reqd``, same server.

A real vsftpd (Debian's package, explicit FTPS with ``force_local_data_ssl`` and
``require_ssl_reuse=YES``, on a high port of 127.0.0.1: see tests/batch/real_servers.py)
receives a 13 MB import file, several times each way, each a fresh connection and login:

- **curl**: ``curl -T file --ssl-reqd`` to the final name;
- **crmsync**: ``FileSpace.upload``, as a batch run does: upload under a temporary name,
  check the size on the server, rename, then write the manifest the same way;
- **fsspec default** (for reference): fsspec's own FTP upload, one ``STOR`` + ``REST`` and
  one TLS handshake per 64 KiB block, what crmsync did before.

Needs root, vsftpd and curl (``apt-get install vsftpd curl``)::

    sudo python benchmarks/ftps_upload.py            # 13 MB, 5 rounds
    sudo python benchmarks/ftps_upload.py 50 3       # 50 MB, 3 rounds
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.batch.real_servers

from pydantic import SecretStr
from tests.batch.real_servers import PASSWORD, USER, ServerRoot, Vsftpd, tls_files

from crmsync.files import FileSpace, Manifest


def _csv(path: Path, megabytes: float) -> None:
    row = b"someone.%07d@example.com;First;Last;1;12,14;Newsletter;OPTIN\r\n"
    with path.open("wb") as out:
        out.write(b"111;1;2;idList;IdGroup;ExternalGroupName;Status\r\n")
        n = 0
        while out.tell() < megabytes * 1_000_000:
            out.write(row % n)
            n += 1


def _time(action: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(megabytes: float = 13.0, rounds: int = 5) -> None:
    work = Path(tempfile.mkdtemp(prefix="ftps-bench-"))
    root = ServerRoot()
    try:
        with tls_files(work) as tls:
            server = Vsftpd(root, work, tls=True, certfile=tls["cert"], keyfile=tls["key"])
            port = server.start()
            try:
                source = work / "import.csv"
                _csv(source, megabytes)
                size = source.stat().st_size
                url = f"ftps://{USER}@127.0.0.1:{port}/space/"

                def curl() -> None:
                    subprocess.run(
                        ["curl", "-sS", "--ssl-reqd", "--cacert", str(tls["ca"]), "--user",
                         f"{USER}:{PASSWORD}", "-T", str(source),
                         f"ftp://127.0.0.1:{port}/space/in/curl.csv"], check=True)

                def crmsync() -> None:
                    space = FileSpace(url, password=SecretStr(PASSWORD), ca_file=str(tls["ca"]))
                    space.upload(source, "in", "crmsync.csv",
                                 Manifest(file="crmsync.csv", rows=0, sha256=""))
                    space.close()

                def fsspec_default() -> None:
                    from fsspec.implementations.ftp import FTPFileSystem

                    space = FileSpace(url, password=SecretStr(PASSWORD), ca_file=str(tls["ca"]))
                    FTPFileSystem.put_file(space.fs, str(source), space.path("in", "old.csv"))
                    space.close()

                results = {"curl -T --ssl-reqd": _time(curl, rounds),
                           "crmsync FileSpace.upload": _time(crmsync, rounds),
                           "fsspec default (before)": _time(fsspec_default, 1)}
                for name in ("curl.csv", "crmsync.csv", "old.csv"):
                    assert (root.space / "in" / name).stat().st_size == size, name
            finally:
                server.stop()
    finally:
        root.close()
    base = results["curl -T --ssl-reqd"]
    print(f"FTPS upload of {size / 1e6:.1f} MB to vsftpd 3.0.3 on 127.0.0.1, median of "
          f"{rounds} (fsspec default: 1 round)\n")
    print("| client | seconds | MB/s | x curl |")
    print("|---|---:|---:|---:|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.3f} | {size / 1e6 / seconds:.0f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: vsftpd serves a chroot as a local test user")
    args = [float(a) for a in sys.argv[1:]]
    main(args[0] if args else 13.0, int(args[1]) if len(args) > 1 else 5)
