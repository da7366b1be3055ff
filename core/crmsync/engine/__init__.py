"""The engine: mapping, consent policy, post-operations, the batch run, the real-time worker."""

from __future__ import annotations

from .batch import BatchSync, RunStats
from .consent import Decision, decide
from .mapping import ListMapper
from .postops import PostOperationRules

__all__ = ["BatchSync", "Decision", "ListMapper", "PostOperationRules", "RunStats", "decide"]
