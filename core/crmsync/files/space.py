"""A file space reached through fsspec, with atomic uploads and an archive.

``file://`` is a local folder, ``ftp://`` plain FTP, ``ftps://`` FTP with explicit TLS
(AUTH TLS, protected data channel), ``sftp://`` SSH (paramiko). Uploads go to a
temporary name and are renamed once complete, then a manifest (row count, SHA-256) is
written beside them: a reader never sees half a file. Processed exports are moved to
the archive folder, never deleted.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ftplib
import hashlib
import io
import json
import logging
import posixpath
import shutil
import socket
import ssl
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

import fsspec
from pydantic import SecretStr

from ..errors import TransportError

__all__ = ["FileSpace", "IncompleteFile", "Manifest", "large_csv_fields",
           "neutralise_formula"]

log = logging.getLogger(__name__)

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


_csv_lock = threading.Lock()
_csv_users = 0
_csv_limit = 0


@contextlib.contextmanager
def large_csv_fields() -> Iterator[None]:
    """Let ``csv`` readers take cells of any size (its default cap is 128 KiB) for
    the block.

    CRM text fields can be that long (a Salesforce long text area holds 131,072
    characters, more once escaped), and a reader refusing one would stop a run on every
    attempt. The limit is process-wide in ``csv``: it is raised while any block holds
    it (blocks in several threads share it) and put back as it was when the last one
    ends, so a library call leaves the embedding program's setting untouched.
    """
    import csv

    global _csv_users, _csv_limit
    with _csv_lock:
        if _csv_users == 0:
            _csv_limit = csv.field_size_limit(2**31 - 1)
        _csv_users += 1
    try:
        yield
    finally:
        with _csv_lock:
            _csv_users -= 1
            if _csv_users == 0:
                csv.field_size_limit(_csv_limit)


def neutralise_formula(value: str) -> str:
    """Prefix a cell that a spreadsheet would run as a formula (CSV injection)."""
    if value and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@dataclass(frozen=True)
class Manifest:
    """What was uploaded: the file's name, its row count and its SHA-256."""

    file: str
    rows: int
    sha256: str
    run_id: str = ""

    def to_json(self) -> bytes:
        return json.dumps({"file": self.file, "rows": self.rows, "sha256": self.sha256,
                           "run_id": self.run_id}, sort_keys=True).encode()


class IncompleteFile(TransportError):
    """A file that changed while it was read: it is left in place and read next run."""


class FileSpace:
    """One file space; paths are relative to the URL's folder.

    Nothing is connected until the first operation, so a run opens the connection once
    it holds the batch lock (a hung server cannot pile up runs waiting before it).
    """

    def __init__(self, url: str, *, username: str | None = None,
                 password: SecretStr | None = None, timeout: float = 30.0,
                 base_dir: Path | None = None, ca_file: str | None = None,
                 known_hosts: str | Path | None = None) -> None:
        self.url = url
        parsed = urlparse(url)
        self.scheme = parsed.scheme
        self.timeout = timeout
        self._secret = password.get_secret_value() if password else None
        self._user = username or (unquote(parsed.username) if parsed.username else None)
        self._ca_file = ca_file
        self.known_hosts = Path(known_hosts or "~/.ssh/known_hosts").expanduser()
        if parsed.password and not self._secret:
            raise TransportError(
                f"a password is written in the file-space URL {self.display}: remove it and set "
                "CRMSYNC_FILES_PASSWORD instead")
        if self.scheme not in ("file", "ftp", "ftps", "sftp"):
            raise TransportError(f"unsupported file-space scheme {self.scheme!r}")
        self._fs: Any = None
        #: the size and modification time of each file as :meth:`open_read` read it
        self.read_stamps: dict[str, tuple[int, str]] = {}
        if self.scheme == "file":
            raw = (parsed.netloc + parsed.path) or "."
            root = Path(raw)
            if not root.is_absolute() and base_dir is not None:
                root = base_dir / root
            # made on the first upload or archive, not here: a dry run creates nothing
            self._fs = fsspec.filesystem("file")
            self.root = str(root.resolve())
        elif self.scheme == "sftp":
            self.root = parsed.path or "."
        else:
            self.root = parsed.path or "/"

    @property
    def fs(self) -> Any:
        """The fsspec file system, connected on first use."""
        if self._fs is None:
            self._fs = self._connect()
        return self._fs

    def _connect(self) -> Any:
        parsed = urlparse(self.url)
        try:
            if self.scheme in ("ftp", "ftps"):
                from .ftp import ftp_filesystem

                return ftp_filesystem(
                    host=parsed.hostname or "", port=parsed.port or 21,
                    username=self._user or "", password=self._secret or "",
                    tls=self.scheme == "ftps", timeout=self.timeout, ca_file=self._ca_file)
            from .sftp import sftp_filesystem

            return sftp_filesystem(
                host=parsed.hostname or "", port=parsed.port or 22, username=self._user,
                password=self._secret, timeout=self.timeout, known_hosts=self.known_hosts)
        except TransportError:
            raise
        except ImportError as exc:
            # fsspec re-raises a failed import as a bare ImportError: no module name then
            extra = "sftp" if self.scheme == "sftp" else "ftp"
            needs = exc.name or ("paramiko" if extra == "sftp" else "a module it could not "
                                 f"import ({exc})")
            raise TransportError(f"{self.scheme}:// needs {needs}, which is not installed: run "
                                 f"pip install 'crmsync[{extra}]'") from None
        except Exception as exc:
            hint = ""
            if _is_login_error(exc):
                hint = "; check [files] url, username and CRMSYNC_FILES_PASSWORD"
            raise TransportError(
                f"cannot connect to the file space {self.display}: {self._explain(exc)}"
                f"{hint}") from None

    def _explain(self, exc: BaseException) -> str:
        """What went wrong, in words: some transport errors carry no text at all."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (f"the server's TLS certificate is not trusted ({exc.verify_message}): if "
                    "it is signed by your own CA, set [files] ca_file to that CA's certificate "
                    "(PEM) (CERTIFICATE_VERIFY_FAILED)")
        if isinstance(exc, TimeoutError | socket.timeout):
            return (f"no answer from the server within {self.timeout:g} s ([files] timeout_s) "
                    f"({type(exc).__name__})")
        if isinstance(exc, EOFError | ConnectionResetError | BrokenPipeError):
            return f"the server closed the connection ({type(exc).__name__})"
        if isinstance(exc, ssl.SSLError) and "EOF" in str(exc):
            return f"the server closed the TLS connection ({exc})"
        text = str(exc).strip()
        if text.startswith("size mismatch in put!"):  # paramiko: "size mismatch in put!  n != m"
            arrived, _, expected = text.split("!", 1)[1].split()
            return (f"only {arrived} of {expected} bytes arrived (a full disk or a quota, most "
                    "often: check the server's free space)")
        if self.scheme == "sftp" and isinstance(exc, OSError) and text == "Failure":
            return ("the SFTP server refused with its generic 'Failure' and no reason (a full "
                    "disk or a quota, most often: check the server's free space) (OSError)")
        if text[:3] in ("451", "452", "552"):
            return f"the server could not store the file (a full disk or a quota?): {text}"
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    @property
    def display(self) -> str:
        parsed = urlparse(self.url)
        host = parsed.hostname or ""
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{host}{port}{parsed.path}"

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FileNotFoundError:
            raise
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(
                f"file space {self.display}: {what} failed: {self._explain(exc)}") from None

    def makedirs(self, folder: str) -> None:
        self._call(f"creating {folder}", self.fs.makedirs, self.path(folder), exist_ok=True)

    def list(self, folder: str, pattern: str = "*") -> list[str]:
        """File names in ``folder`` matching ``pattern`` (temporary and manifest files excluded)."""
        target = self.path(folder)
        try:
            entries = self._call(f"listing {folder}", self.fs.ls, target, detail=True)
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            if entry.get("type") not in ("file", None):
                continue
            name = posixpath.basename(entry["name"].rstrip("/"))
            if name.startswith(".") or name.endswith(".manifest.json") or name.endswith(".part"):
                continue
            if fnmatch.fnmatch(name, pattern):
                names.append(name)
        return sorted(names)

    def stamp(self, folder: str, name: str) -> tuple[int, str]:
        """The file's size and modification time: what changes while it is written."""
        path = self.path(folder, name)
        if self.scheme in ("ftp", "ftps"):
            size, modified = self._call(f"checking {name}", self.fs.stamp, path)
            return int(size), str(modified)
        info = self._call(f"checking {name}", self.fs.info, path)
        return int(info["size"]), str(info.get("mtime") or info.get("modified") or "")

    def settled(self, folder: str, names: Sequence[str], wait_s: float) -> Sequence[str]:
        """Those of ``names`` whose size and modification time stay the same across
        ``wait_s`` seconds; the others are still being written and are left for a
        later run (logged). One wait for all of them."""
        if not names or wait_s <= 0:
            return list(names)
        before: dict[str, tuple[int, str]] = {}
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                before[name] = self.stamp(folder, name)
        time.sleep(wait_s)
        ready: list[str] = []
        for name in names:
            try:
                now = self.stamp(folder, name)
            except FileNotFoundError:
                continue
            if before.get(name) == now:
                ready.append(name)
            else:
                log.warning("%s is still being written (its size or time changed within "
                            "%g s): left for the next run", name, wait_s)
        return ready

    def open_read(self, folder: str, name: str) -> IO[bytes]:
        """A binary stream of the whole file, as it was from first byte to last; zip
        archives yield their single member.

        A remote file is downloaded first (one ``RETR`` or one SFTP read), and its
        size and modification time are taken before and after: a file that changed
        meanwhile, or whose length differs from what came down, raises
        :class:`IncompleteFile` and is not read.
        """
        path = self.path(folder, name)
        before = self.stamp(folder, name)
        handle: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller
        try:
            if self.scheme == "sftp":
                self._call(f"reading {name}", self.fs.ftp.getfo, path, handle)
            elif self.scheme == "file":
                with self._call(f"reading {name}", self.fs.open, path, "rb") as source:
                    shutil.copyfileobj(source, handle, 1 << 20)
            else:
                self._call(f"reading {name}", self.fs.retrieve, path, handle)
        except BaseException:
            handle.close()
            raise
        data_size = handle.tell()
        handle.seek(0)
        after = self.stamp(folder, name)
        if after != before or data_size != after[0]:
            handle.close()
            raise IncompleteFile(
                f"{name} changed while it was read ({before[0]} bytes, then {after[0]}; "
                f"{data_size} read): it is still being written and is left for the next run")
        self.read_stamps[name] = after
        if name.lower().endswith(".zip"):
            data = handle.read()
            handle.close()
            try:
                archive = zipfile.ZipFile(io.BytesIO(data))
            except zipfile.BadZipFile:
                raise IncompleteFile(f"{name} is not a whole zip archive (still being "
                                     "written?): it is left for the next run") from None
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise TransportError(f"{name} holds {len(members)} files; expected exactly one")
            return archive.open(members[0])
        return handle

    @contextlib.contextmanager
    def open_whole(self, folder: str, name: str) -> Iterator[IO[bytes] | None]:
        """:meth:`open_read` as a context, ``None`` (logged) for a file that changed while
        it was read: the caller leaves it for the next run."""
        try:
            handle = self.open_read(folder, name)
        except IncompleteFile as exc:
            log.warning("%s", exc)
            yield None
            return
        with handle:
            yield handle

    def exists(self, folder: str, name: str) -> bool:
        return bool(self._call(f"checking {name}", self.fs.exists, self.path(folder, name)))

    def upload(self, local: Path, folder: str, name: str, manifest: Manifest, *,
               zip_it: bool = False) -> str:
        """Upload ``local`` as ``folder/name`` atomically, then its manifest; return the name.

        The file goes up under a temporary name, its size on the server is checked, and
        only then is it renamed: a reader never sees part of it. With ``zip_it`` the
        manifest's ``rows`` and ``sha256`` still describe the CSV inside the zip (what
        the ESP imports), not the zip's own bytes.
        """
        self.makedirs(folder)
        final = name + ".zip" if zip_it else name
        temp = f".{final}.part"
        source: Path = local
        if zip_it:
            source = local.with_suffix(local.suffix + ".zip")
            with zipfile.ZipFile(source, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.write(local, arcname=name)
        self._put(source, folder, temp, final)
        self._replace(folder, temp, final)
        manifest_name = final + ".manifest.json"
        with tempfile.TemporaryDirectory() as spool:
            local_manifest = Path(spool) / manifest_name
            local_manifest.write_bytes(manifest.to_json())
            self._put(local_manifest, folder, f".{manifest_name}.part", manifest_name)
        self._replace(folder, f".{manifest_name}.part", manifest_name)
        return final

    def _put(self, source: Path, folder: str, temp: str, final: str) -> None:
        """Upload to ``temp``; check that all of it arrived (a partial one is removed)."""
        target = self.path(folder, temp)
        if self.exists(folder, temp):
            self._call(f"removing {temp}", self.fs.rm_file, target)
        expected = source.stat().st_size
        try:
            self._call(f"uploading {final}", self.fs.put_file, str(source), target)
            arrived = int(self._call(f"checking {final}", self.fs.size, target))
            if arrived != expected:
                raise TransportError(
                    f"file space {self.display}: uploading {final} failed: {arrived} of "
                    f"{expected} bytes arrived (a full disk or a quota?); not renamed, the "
                    "next run uploads it again")
        except TransportError:
            with contextlib.suppress(Exception):  # free the space a partial file holds
                self.fs.rm_file(target)
            raise

    def _replace(self, folder: str, temp: str, final: str) -> None:
        if self.exists(folder, final):
            self._call(f"replacing {final}", self.fs.rm_file, self.path(folder, final))
        self._call(f"renaming {temp} to {final}", self.fs.mv, self.path(folder, temp),
                   self.path(folder, final))

    def archive(self, folder: str, name: str, archive_dir: str) -> None:
        """Move a processed file to the archive folder (kept, never deleted)."""
        self.makedirs(archive_dir)
        target = name
        if self.exists(archive_dir, target):
            stem, dot, ext = name.rpartition(".")
            target = f"{stem or name}-{hashlib.sha256(name.encode()).hexdigest()[:6]}" \
                     f"{dot}{ext if stem else ''}"
        self._call(f"archiving {name}", self.fs.mv, self.path(folder, name),
                   self.path(archive_dir, target))

    def write_bytes(self, folder: str, name: str, data: bytes) -> None:
        self.makedirs(folder)
        with tempfile.TemporaryDirectory() as spool:
            local = Path(spool) / "data"
            local.write_bytes(data)
            self._call(f"writing {name}", self.fs.put_file, str(local), self.path(folder, name))

    def read_bytes(self, folder: str, name: str) -> bytes:
        with self.open_read(folder, name) as handle:
            return handle.read()

    def walk_names(self, folder: str) -> Iterator[str]:
        yield from self.list(folder)

    def close(self) -> None:
        fs, self._fs = self._fs, None
        if fs is None or self.scheme == "file":
            return
        for owner in (getattr(fs, "client", None), getattr(fs, "ftp", None)):
            closer = getattr(owner, "close", None)
            if callable(closer):
                with contextlib.suppress(Exception):  # best effort on shutdown
                    closer()


def _is_login_error(exc: BaseException) -> bool:
    if isinstance(exc, ftplib.error_perm) and str(exc)[:3] in ("530", "331", "332"):
        return True
    return type(exc).__name__ in ("AuthenticationException", "BadAuthenticationType")
