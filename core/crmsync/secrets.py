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

__all__ = ["Secrets", "read_secrets_file"]


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
    over ``file`` (the secrets file's values)."""

    def __init__(self, file: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.file: dict[str, str] = dict(file or {})
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    def __getitem__(self, key: str) -> str:
        if key in self.environ:
            return self.environ[key]
        return self.file[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.environ
        yield from (key for key in self.file if key not in self.environ)

    def __len__(self) -> int:
        return len(set(self.environ) | set(self.file))

    def __repr__(self) -> str:  # names only: never a value
        return f"Secrets(file keys={sorted(self.file)})"
