"""SFTP for fsspec: the server's host key verified, every step under a timeout.

fsspec's SFTP file system accepts any host key it has not seen (paramiko's
``AutoAddPolicy``) and passes the timeout to the TCP connect only. Here the host key
must be in a known-hosts file (``[files] known_hosts``, ``~/.ssh/known_hosts`` by
default, OpenSSH's format, hashed entries included): an unknown or changed key is
refused with a message saying how to trust it. The timeout bounds the TCP connect, the
SSH banner, the authentication, opening the SFTP channel and every read or write on
it afterwards, so a server that stops mid-transfer fails the run instead of hanging it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import paramiko
from fsspec.implementations.sftp import SFTPFileSystem

from ..errors import TransportError

__all__ = ["sftp_filesystem"]


def _fingerprint(key: paramiko.PKey) -> str:
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def _host_entry(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _Refuse(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Refuse a host whose key is not in the known-hosts file, saying how to trust it."""

    def __init__(self, known_hosts: Path, port: int) -> None:
        self.known_hosts = known_hosts
        self.port = port

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        host = hostname.split("]")[0].lstrip("[")
        scan = f"ssh-keyscan -p {self.port} {host}" if self.port != 22 else f"ssh-keyscan {host}"
        raise TransportError(
            f"the SFTP server {_host_entry(host, self.port)} is not in {self.known_hosts} "
            f"(its host key: {_fingerprint(key)}); nothing was sent to it. If that is your "
            f"server's key (ask its administrator), trust it with `{scan} >> "
            f"{self.known_hosts}`, or point [files] known_hosts at a file that lists it")


class _VerifiedSFTPFileSystem(SFTPFileSystem):  # type: ignore[misc]
    def __init__(self, host: str, *, known_hosts: Path, timeout: float,
                 **ssh_kwargs: Any) -> None:
        self._known_hosts = known_hosts
        self._timeout = timeout
        super().__init__(host, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                         channel_timeout=timeout, **ssh_kwargs)

    def _connect(self) -> None:
        client = paramiko.SSHClient()
        port = int(self.ssh_kwargs.get("port") or 22)
        if self._known_hosts.is_file():
            client.load_system_host_keys(str(self._known_hosts))
        client.set_missing_host_key_policy(_Refuse(self._known_hosts, port))
        started = time.monotonic()
        try:
            client.connect(self.host, **self.ssh_kwargs)
        except paramiko.BadHostKeyException as exc:
            client.close()
            entry = _host_entry(self.host, port)
            raise TransportError(
                f"the SFTP server {entry} presented a host key that differs from the one in "
                f"{self._known_hosts} (now {_fingerprint(exc.key)}, known "
                f"{_fingerprint(exc.expected_key)}): someone may be intercepting the "
                f"connection, so nothing was sent. If the server's key was really replaced "
                f"(ask its administrator), remove the old entry with `ssh-keygen -R "
                f"'{entry}' -f {self._known_hosts}` and trust the new one") from None
        except paramiko.SSHException:
            transport = client.get_transport()
            client.close()
            if transport is not None and not getattr(transport, "remote_version", ""):
                # no SSH banner came: paramiko says "No existing session" or "Error
                # reading SSH protocol banner"; say whether the server was silent or left
                if time.monotonic() - started >= self._timeout * 0.9:
                    raise TimeoutError("the server sent no SSH banner") from None
                raise EOFError("the server sent no SSH banner") from None
            raise
        except BaseException:
            client.close()
            raise
        self.client = client
        self.ftp = client.open_sftp()
        self.ftp.get_channel().settimeout(self._timeout)  # every read and write after


def _quiet_paramiko() -> None:
    """paramiko logs its own ``ERROR`` lines for what crmsync reports in one clear line;
    keep them out unless debug logging was asked for (``-vv``)."""
    logger = logging.getLogger("paramiko")
    if logger.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.CRITICAL)


def sftp_filesystem(*, host: str, port: int, username: str | None, password: str | None,
                    timeout: float, known_hosts: Path) -> Any:
    """An fsspec SFTP file system that verifies the host key against ``known_hosts``."""
    _quiet_paramiko()
    return _VerifiedSFTPFileSystem(
        host, known_hosts=known_hosts, timeout=timeout, port=port, username=username,
        password=password, look_for_keys=password is None, allow_agent=password is None,
        skip_instance_cache=True)
