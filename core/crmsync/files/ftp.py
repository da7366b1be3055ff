"""FTP and FTPS (explicit TLS) for fsspec, with a protected data channel.

fsspec's FTP file system logs in over TLS but leaves the data channel in clear text,
does not verify the server's certificate and uploads a file as one ``STOR`` with a
``REST`` offset per 64 KiB block. Here:

- ``PROT P`` is sent after login so file contents are encrypted too, and the
  certificate is checked against the system trust store or ``ca_file``;
- every data connection resumes the control connection's TLS session, which servers
  such as vsftpd require by default (``require_ssl_reuse=YES``) so that nobody else can
  take over the data connection;
- every socket operation, on both channels, times out after ``timeout`` seconds;
- a file goes up in one ``STOR`` and comes down in one ``RETR``; ``SIZE`` and ``MDTM``
  give its size and modification time without listing its folder.
"""

from __future__ import annotations

import ftplib
import socket
import ssl
from typing import IO, Any

from fsspec.implementations.ftp import FTPFileSystem

__all__ = ["ftp_filesystem"]

_BLOCK = 1 << 20  # one send() per MiB: the STOR is one stream whatever the size


class _SessionReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session."""

    def ntransfercmd(self, cmd: str, rest: int | str | None = None
                     ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)  # noqa: S321 - PROT P below
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=session)
        return conn, size


class _SecureFTPFileSystem(FTPFileSystem):  # type: ignore[misc]
    def __init__(self, *args: Any, ssl_context: ssl.SSLContext | None = None,
                 **kwargs: Any) -> None:
        self._ssl_context = ssl_context
        super().__init__(*args, **kwargs)

    def _connect(self) -> None:
        if not self.tls:
            super()._connect()
            return
        # explicit TLS on both channels (PROT P), the certificate verified
        self.ftp = _SessionReusingFTP_TLS(
            timeout=self.timeout, encoding=self.encoding,
            context=self._ssl_context or ssl.create_default_context())
        self.ftp.connect(self.host, self.port)
        self.ftp.login(*self.cred)
        self.ftp.prot_p()

    def put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        """Upload in one ``STOR`` (not fsspec's one ``STOR`` + ``REST`` per block)."""
        rpath = self._strip_protocol(rpath)
        try:
            with open(lpath, "rb") as source:
                self.ftp.storbinary(f"STOR {rpath}", source, blocksize=_BLOCK)
        finally:  # a failed STOR may still have left a file
            self.invalidate_cache(self._parent(rpath))

    def retrieve(self, rpath: str, out: IO[bytes]) -> None:
        """Download in one ``RETR`` into ``out``."""
        self.ftp.retrbinary(f"RETR {self._strip_protocol(rpath)}", out.write, blocksize=_BLOCK)

    def size(self, path: str) -> int:
        self.ftp.voidcmd("TYPE I")
        value = self.ftp.size(self._strip_protocol(path))
        if value is None:
            raise FileNotFoundError(path)
        return int(value)

    def stamp(self, path: str) -> tuple[int, str]:
        """``SIZE`` and ``MDTM``: what changes while a file is being written."""
        size = self.size(path)
        try:
            modified = self.ftp.voidcmd(f"MDTM {self._strip_protocol(path)}").split()[-1]
        except ftplib.error_perm:  # a server without MDTM: the size has to do
            modified = ""
        return size, modified


def ftp_filesystem(*, host: str, port: int, username: str, password: str, tls: bool,
                   timeout: float, ca_file: str | None = None) -> Any:
    """An fsspec FTP file system; ``tls`` for explicit FTPS (AUTH TLS + PROT P)."""
    context = ssl.create_default_context(cafile=ca_file) if tls else None
    return _SecureFTPFileSystem(host=host, port=port, username=username or "anonymous",
                                password=password, tls=tls, timeout=timeout,
                                ssl_context=context, skip_instance_cache=True)
