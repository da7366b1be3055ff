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
import hashlib
import io
import json
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

import fsspec
from pydantic import SecretStr

from ..errors import TransportError

__all__ = ["FileSpace", "Manifest", "allow_large_csv_fields", "neutralise_formula"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def allow_large_csv_fields() -> None:
    """Let ``csv`` readers take cells of any size (its default cap is 128 KiB).

    CRM text fields can be that long (a Salesforce long text area holds 131,072
    characters, more once escaped), and a reader refusing one would stop a run on every
    attempt. Process-wide and only ever raised, never lowered again, so readers running
    at the same time cannot undo each other.
    """
    import csv

    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


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


class FileSpace:
    """One file space; paths are relative to the URL's folder."""

    def __init__(self, url: str, *, username: str | None = None,
                 password: SecretStr | None = None, timeout: float = 30.0,
                 base_dir: Path | None = None, ca_file: str | None = None) -> None:
        self.url = url
        parsed = urlparse(url)
        self.scheme = parsed.scheme
        secret = password.get_secret_value() if password else None
        user = username or (unquote(parsed.username) if parsed.username else None)
        if parsed.password and not secret:
            raise TransportError(
                f"a password is written in the file-space URL {self.display}: remove it and set "
                "CRMSYNC_FILES_PASSWORD instead")
        try:
            if self.scheme == "file":
                raw = (parsed.netloc + parsed.path) or "."
                root = Path(raw)
                if not root.is_absolute() and base_dir is not None:
                    root = base_dir / root
                root.mkdir(parents=True, exist_ok=True)
                self.fs: Any = fsspec.filesystem("file")
                self.root = str(root.resolve())
            elif self.scheme in ("ftp", "ftps"):
                from .ftp import ftp_filesystem

                self.fs = ftp_filesystem(
                    host=parsed.hostname or "", port=parsed.port or 21, username=user or "",
                    password=secret or "", tls=self.scheme == "ftps", timeout=timeout,
                    ca_file=ca_file)
                self.root = parsed.path or "/"
            elif self.scheme == "sftp":
                self.fs = fsspec.filesystem(
                    "sftp", host=parsed.hostname, port=parsed.port or 22, username=user,
                    password=secret, timeout=timeout, look_for_keys=secret is None,
                    allow_agent=secret is None, skip_instance_cache=True)
                self.root = parsed.path or "."
            else:
                raise TransportError(f"unsupported file-space scheme {self.scheme!r}")
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
            raise TransportError(
                f"cannot connect to the file space {self.display}: {type(exc).__name__}: {exc}; "
                "check [files] url, username and CRMSYNC_FILES_PASSWORD") from None

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
                f"file space {self.display}: {what} failed: {type(exc).__name__}: {exc}") from None

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

    def open_read(self, folder: str, name: str) -> IO[bytes]:
        """A binary stream of the file; zip archives yield their single member."""
        handle: IO[bytes] = self._call(f"reading {name}", self.fs.open,
                                       self.path(folder, name), "rb")
        if name.lower().endswith(".zip"):
            data = handle.read()
            handle.close()
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise TransportError(f"{name} holds {len(members)} files; expected exactly one")
            return archive.open(members[0])
        return handle

    def exists(self, folder: str, name: str) -> bool:
        return bool(self._call(f"checking {name}", self.fs.exists, self.path(folder, name)))

    def upload(self, local: Path, folder: str, name: str, manifest: Manifest, *,
               zip_it: bool = False) -> str:
        """Upload ``local`` as ``folder/name`` atomically, then its manifest; return the name."""
        self.makedirs(folder)
        final = name + ".zip" if zip_it else name
        temp = f".{final}.part"
        source: Path = local
        if zip_it:
            source = local.with_suffix(local.suffix + ".zip")
            with zipfile.ZipFile(source, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.write(local, arcname=name)
        if self.exists(folder, temp):
            self._call(f"removing {temp}", self.fs.rm, self.path(folder, temp))
        self._call(f"uploading {final}", self.fs.put_file, str(source), self.path(folder, temp))
        if self.exists(folder, final):
            self._call(f"replacing {final}", self.fs.rm, self.path(folder, final))
        self._call(f"renaming {temp} to {final}", self.fs.mv, self.path(folder, temp),
                   self.path(folder, final))
        manifest_name = final + ".manifest.json"
        with self._call(f"writing {manifest_name}", self.fs.open,
                        self.path(folder, f".{manifest_name}.part"), "wb") as out:
            out.write(manifest.to_json())
        if self.exists(folder, manifest_name):
            self._call(f"replacing {manifest_name}", self.fs.rm, self.path(folder, manifest_name))
        self._call(f"renaming {manifest_name}", self.fs.mv,
                   self.path(folder, f".{manifest_name}.part"), self.path(folder, manifest_name))
        return final

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
        with self._call(f"writing {name}", self.fs.open, self.path(folder, name), "wb") as out:
            out.write(data)

    def read_bytes(self, folder: str, name: str) -> bytes:
        with self.open_read(folder, name) as handle:
            return handle.read()

    def walk_names(self, folder: str) -> Iterator[str]:
        yield from self.list(folder)

    def close(self) -> None:
        closer = getattr(self.fs, "close", None) or getattr(getattr(self.fs, "ftp", None),
                                                            "close", None)
        if self.scheme != "file" and callable(closer):
            with contextlib.suppress(Exception):  # best effort on shutdown
                closer()
