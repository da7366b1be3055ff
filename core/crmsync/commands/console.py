"""``crmsync console``: the operator's web console alone (no webhooks, no worker)."""

from __future__ import annotations

import sys

import click

from ..cli import Context, cli
from ..errors import ConfigError
from ..runtime import open_store


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: [console] listen).")
@click.option("--port", "-p", type=int, default=None,
              help="Port to listen on (default: [console] listen).")
@click.option("--hash-password", "hash_only", is_flag=True,
              help="Read a password (asked for, or one line on stdin) and print the hash "
                   "to set as CRMSYNC_CONSOLE_PASSWORD_HASH; start nothing.")
@click.pass_obj
def console(obj: Context, host: str | None, port: int | None, hash_only: bool) -> None:
    """Serve the operator's web console at /admin, for batch-only deployments
    (`crmsync serve` serves it too).

    It needs an operator password: CRMSYNC_CONSOLE_PASSWORD_HASH (from
    --hash-password) or CRMSYNC_CONSOLE_PASSWORD, in the environment or the secrets
    file. Serve it on 127.0.0.1 or behind HTTPS: its session cookie is Secure.
    """
    from ..server.console import HASH_ENV, PASSWORD_ENV, hash_password

    if hash_only:
        if sys.stdin.isatty():
            password = click.prompt("console password", hide_input=True,
                                    confirmation_prompt=True, err=True)
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        if len(password) < 12:
            raise ConfigError("the console password needs at least 12 characters")
        click.echo(hash_password(password))
        return
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ..server.console import console_routes
    from ..server.service import parse_listen
    from .serve import _check_free

    config = obj.config()
    default_host, default_port = parse_listen(config.console.listen)
    where = (host or default_host, default_port if port is None else port)
    store = open_store(config)
    try:
        routes = console_routes(config, store, config_path=obj.config_path.resolve())
        if not routes:
            raise ConfigError(f"no console password: set {HASH_ENV} (crmsync console "
                              f"--hash-password prints one) or {PASSWORD_ENV}, in the "
                              "environment or the secrets file")
        _check_free(*where)

        async def healthz(request: object) -> PlainTextResponse:
            return PlainTextResponse("ok\n")

        app = Starlette(routes=[*routes, Route("/healthz", healthz, methods=["GET"])])
        click.echo(f"crmsync console: http://{where[0]}:{where[1]}/admin; SIGTERM or Ctrl-C "
                   "stops it", err=True)
        uvicorn.Server(uvicorn.Config(app, host=where[0], port=where[1], lifespan="off",
                                      log_level="warning", access_log=False,
                                      proxy_headers=False)).run()
    finally:
        store.close()
