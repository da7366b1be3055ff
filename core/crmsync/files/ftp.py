"""FTP and FTPS (explicit TLS) for fsspec, with a protected data channel.

fsspec's FTP file system logs in over TLS but leaves the data channel in clear text
and does not verify the server's certificate. Here ``PROT P`` is sent after login so
file contents are encrypted too, and the certificate is checked against the system
trust store or ``ca_file``.
"""

from __future__ import annotations

import ftplib
import ssl
from typing import Any

from fsspec.implementations.ftp import FTPFileSystem

__all__ = ["ftp_filesystem"]


class _SecureFTPFileSystem(FTPFileSystem):  # type: ignore[misc]
    def __init__(self, *args: Any, ssl_context: ssl.SSLContext | None = None,
                 **kwargs: Any) -> None:
        self._ssl_context = ssl_context
        super().__init__(*args, **kwargs)

    def _connect(self) -> None:
        if not self.tls:
            super()._connect()
            return
        self.ftp = ftplib.FTP_TLS(  # noqa: S321 - explicit TLS on both channels (PROT P)timeout=self.timeout, encoding=self.encoding,
                                  context=self._ssl_context or ssl.create_default_context())
        self.ftp.connect(self.host, self.port)
        self.ftp.login(*self.cred)
        self.ftp.prot_p()


def ftp_filesystem(*, host: str, port: int, username: str, password: str, tls: bool,
                   timeout: float, ca_file: str | None = None) -> Any:
    """An fsspec FTP file system; ``tls`` for explicit FTPS (AUTH TLS + PROT P)."""
    context = ssl.create_default_context(cafile=ca_file) if tls else None
    return _SecureFTPFileSystem(host=host, port=port, username=username or "anonymous",
                                password=password, tls=tls, timeout=timeout,
                                ssl_context=context, skip_instance_cache=True)
