"""The engine: plan (pure decisions), apply (send and commit), and two drivers over
them — the batch run and the real-time worker — plus mapping, consent policy and
post-operations."""

from __future__ import annotations

from .apply import Pipeline, RunStats
from .batch import BatchSync
from .consent import Decision, decide
from .mapping import ListMapper
from .plan import ContactDecision, Failure, Plan
from .postops import PostOperationRules

__all__ = ["BatchSync", "ContactDecision", "Decision", "Failure", "ListMapper", "Pipeline",
           "Plan", "PostOperationRules", "RunStats", "decide"]
