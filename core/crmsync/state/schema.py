"""The state store's tables (SQLAlchemy Core), identical on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = ["metadata"]

metadata = MetaData()

# One row: the schema version this database is at (see migrations.py).
schema_version = Table(
    "crmsync_schema_version", metadata,
    Column("version", Integer, nullable=False),
)

# Where each incremental read resumes: "crm", "esp", ...
cursors = Table(
    "crmsync_cursors", metadata,
    Column("name", String(100), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("tie_id", String(255), nullable=False, default=""),
    Column("data", JSON, nullable=False, default=dict),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row per person crmsync knows; the key never changes, the email may.
contacts = Table(
    "crmsync_contacts", metadata,
    Column("key", String(64), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("fields_hash", String(64)),
    Column("fields_json", JSON),  # the mapped fields as last sent, to recognise echoes
    Column("deleted", Boolean, nullable=False, default=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_crmsync_contacts_email", "email"),
)

# Record ids per system -> contact key (matching by id first, then email).
id_map = Table(
    "crmsync_id_map", metadata,
    Column("system", String(100), primary_key=True),
    Column("record_id", String(255), primary_key=True),
    Column("contact_key", String(64), nullable=False),
    Index("ix_crmsync_id_map_contact", "contact_key"),
)

# What crmsync believes is true per contact per list, and what the CRM last said.
snapshots = Table(
    "crmsync_snapshots", metadata,
    Column("contact_key", String(64), primary_key=True),
    Column("list_id", String(100), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("groups", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("crm_status", String(20)),
    Column("hash", String(64), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("source", String(100), nullable=False, default=""),
)

# Append-only: every status change, with its source and reason.
journal = Table(
    "crmsync_journal", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("run_id", String(64), nullable=False, default=""),
    Column("contact_key", String(64), nullable=False),
    Column("email", String(320), nullable=False),
    Column("list_id", String(100), nullable=False),
    Column("old_status", String(20)),
    Column("new_status", String(20), nullable=False),
    Column("applied_to", String(10), nullable=False),
    Column("source", String(100), nullable=False),
    Column("reason", Text),
    Column("event_id", String(255)),
    Index("ix_crmsync_journal_contact", "contact_key"),
)

runs = Table(
    "crmsync_runs", metadata,
    Column("id", String(64), primary_key=True),
    Column("mode", String(20), nullable=False),
    Column("full", Boolean, nullable=False, default=False),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(20), nullable=False),
    Column("stats", JSON, nullable=False, default=dict),
)

# Received events, stored before the sender is acknowledged.
inbox = Table(
    "crmsync_inbox", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("endpoint", String(100), nullable=False),
    Column("dedupe_key", String(255), nullable=False),
    Column("contact", String(320), nullable=False, default=""),
    Column("payload", JSON, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("status", String(20), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    UniqueConstraint("endpoint", "dedupe_key", name="uq_crmsync_inbox_dedupe"),
    Index("ix_crmsync_inbox_status", "status", "next_attempt_at"),
    Index("ix_crmsync_inbox_contact", "contact", "status", "id"),
)

# Writes staged for a side, applied and marked done once that side acknowledged.
outbox = Table(
    "crmsync_outbox", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("target", String(10), nullable=False),
    Column("run_id", String(64), nullable=False, default=""),
    Column("batch", String(255), nullable=False, default=""),
    Column("contact_key", String(64), nullable=False, default=""),
    Column("payload", JSON, nullable=False),
    Column("snapshot", JSON),
    Column("status", String(20), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_crmsync_outbox_pending", "target", "status", "batch"),
)

dead_letters = Table(
    "crmsync_dead_letters", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("origin", String(20), nullable=False),
    Column("origin_id", BigInteger, nullable=False),
    Column("endpoint", String(100), nullable=False, default=""),
    Column("payload", JSON, nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("died_at", DateTime(timezone=True), nullable=False),
    Column("replayed", Boolean, nullable=False, default=False),
)

# Files exchanged with the file space and how far each got.
files = Table(
    "crmsync_files", metadata,
    Column("name", String(500), primary_key=True),
    Column("direction", String(10), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("status", String(20), nullable=False),
    Column("rows", Integer, nullable=False, default=0),
    Column("sha256", String(64), nullable=False, default=""),
    Column("info", JSON, nullable=False, default=dict),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The consent ledger (state/ledger.py). A seal per journal entry, filled after the fact
# by a pass in id order (the engine's hot path only appends journal rows): the digest of
# the entry's pseudonymised form, the previous seal's hash, and this seal's hash, a
# keyed hash over both. Kept beside the journal so that its insert stays as it was.
journal_seals = Table(
    "crmsync_journal_seals", metadata,
    Column("journal_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=False),
    Column("digest", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("sealed_at", DateTime(timezone=True), nullable=False),
)

# Addresses erased by `crmsync forget`, as keyed hashes only: a CRM record with one of
# them is never sent to the ESP again (until the person opts in anew at the ESP).
suppressions = Table(
    "crmsync_suppressions", metadata,
    Column("address_hash", String(80), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("reason", String(100), nullable=False, default="erased"),
)
