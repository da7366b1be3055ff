"""Secrets by name: the environment first, then the secrets file, read once.

The secrets file (``secrets_file`` in ``crmsync.toml``) is parsed by python-dotenv,
the one parser: ``export KEY=value``, ``KEY=value # comment``, single and double
quotes (``\\n`` escapes in double quotes, a PEM key on one line). Its values are held
in a :class:`Secrets` mapping handed to whoever needs a secret; the process
environment is never written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import ConfigError

__all__ = ["PREFIX", "Secrets", "read_secrets_file"]

#: What every crmsync secret's name starts with (``CRMSYNC_MAILUP_PASSWORD``).
PREFIX = "CRMSYNC_"


def read_secrets_file(path: str | Path) -> dict[str, str]:
    """The ``KEY=value`` lines of a dotenv file as a dict (python-dotenv's rules)."""
    from dotenv import dotenv_values

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the secrets file {path}: {exc.strerror or exc}"
                          ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the secrets file {path} is not UTF-8 text: save it as UTF-8"
                          ) from None
    import io

    values = dotenv_values(stream=io.StringIO(text))
    # a line without "=" is a key with no value: say which, rather than drop it
    bare = sorted(key for key, value in values.items() if value is None)
    if bare:
        raise ConfigError(f"{path}: {', '.join(bare)} has no value: write KEY=value lines")
    return {key: value for key, value in values.items() if value is not None}


class Secrets(Mapping[str, str]):
    """Secrets by name: ``environ`` (default: the process environment, read only) wins
    over ``file`` (the secrets file's values).

    ``env_prefix``: one pair of a many-pairs deployment reads crmsync's secrets from the
    environment under its own prefix: with ``CRMSYNC_ACME_``, ``CRMSYNC_MAILUP_PASSWORD``
    is read from ``CRMSYNC_ACME_MAILUP_PASSWORD``, never from the unprefixed name (that
    one belongs to another pair, or to no pair). The pair's own secrets file is its own:
    there the plain names are read (the prefixed ones too). Names that do not start with
    ``CRMSYNC_`` (a post-operation's ``secret_env``) are read as they are.
    """

    def __init__(self, file: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None, *,
                 env_prefix: str = PREFIX) -> None:
        self.file: dict[str, str] = dict(file or {})
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.env_prefix = env_prefix

    def env_name(self, key: str) -> str:
        """The environment variable ``key`` is read from."""
        if self.env_prefix != PREFIX and key.startswith(PREFIX):
            return self.env_prefix + key[len(PREFIX):]
        return key

    def __getitem__(self, key: str) -> str:
        name = self.env_name(key)
        if name in self.environ:
            return self.environ[name]
        if key in self.file:
            return self.file[key]
        return self.file[name]

    def _canonical(self, name: str) -> str | None:
        """The key an environment variable answers for (None: another pair's)."""
        if self.env_prefix == PREFIX:
            return name
        if name.startswith(self.env_prefix):
            return PREFIX + name[len(self.env_prefix):]
        return None if name.startswith(PREFIX) else name

    def _keys(self) -> dict[str, None]:
        keys = {key: None for key in map(self._canonical, self.environ) if key is not None}
        for key in self.file:
            keys.setdefault(self._canonical(key) or key, None)
        return keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:  # names only: never a value
        return f"Secrets(file keys={sorted(self.file)}, env_prefix={self.env_prefix!r})"
