"""The file space of batch mode: a folder, FTP, FTPS (explicit TLS) or SFTP, via fsspec."""

from __future__ import annotations

from .space import (
    FileSpace,
    IncompleteFile,
    Manifest,
    large_csv_fields,
    neutralise_formula,
)

__all__ = ["FileSpace", "IncompleteFile", "Manifest", "large_csv_fields",
           "neutralise_formula"]
