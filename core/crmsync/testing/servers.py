"""Real file servers on 127.0.0.1 for tests and the demo: FTP, FTPS (explicit TLS), SFTP."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from crmsync.emulator import free_port


@contextlib.contextmanager
def ftp_server(root: Path, *, tls: bool = False, user: str = "crm",
               password: str = "s3cret",  # noqa: S107 - a throw-away test server
               certfile: str | None = None, keyfile: str | None = None) -> Iterator[int]:
    """pyftpdlib serving ``root``; with ``tls`` explicit FTPS that requires TLS on both
    channels (so a client that forgets PROT P fails)."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
    from pyftpdlib.servers import FTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elradfmwMT")
    handler: type[FTPHandler]
    if tls:
        class Handler(TLS_FTPHandler):  # type: ignore[misc]
            pass

        Handler.certfile = certfile
        Handler.keyfile = keyfile
        Handler.tls_control_required = True
        Handler.tls_data_required = True
        handler = Handler
    else:
        class Plain(FTPHandler):  # type: ignore[misc]
            pass

        handler = Plain
    handler.authorizer = authorizer
    handler.passive_ports = None
    port = free_port()
    server = FTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.1,
                                                                   "blocking": True},
                              daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.close_all()
        thread.join(timeout=5)


@contextlib.contextmanager
def sftp_server(root: Path, *, user: str = "crm",
                password: str = "s3cret") -> Iterator[int]:  # noqa: S107 - test server
    """An asyncssh SFTP server chrooted to ``root``, password authentication."""
    import asyncssh

    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}
    key = asyncssh.generate_private_key("ssh-ed25519")

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, candidate: str) -> bool:
            return username == user and candidate == password

    def sftp_factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(chan, chroot=str(root).encode())

    async def start() -> None:
        holder["server"] = await asyncssh.listen(
            "127.0.0.1", port, server_host_keys=[key], server_factory=Server,
            sftp_factory=sftp_factory, allow_scp=False)
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port
    finally:
        async def stop() -> None:
            server = holder["server"]
            server.close()  # type: ignore[attr-defined]
            await server.wait_closed()  # type: ignore[attr-defined]

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
