"""favorites_add() takes the table's write lock before it reads, as a plain INSERT would.

The function read ``favorites`` (the favorite already held? the count) before inserting, so it
held the table's read lock while it queued for the write lock. ``favorites partition`` holds a
SHARE lock (reads go on, writes wait) and later needs the exclusive lock to swap the tables: an
add caught between its reads and its insert made a lock cycle, and PostgreSQL aborted one side
(the user's add, or the conversion). Taking ROW EXCLUSIVE first makes the add wait for the
conversion, as writes are meant to. ``ONLY``: on the partitioned table, the parent alone (the
insert locks the one partition it writes).

Replaces the body only (same signature), so versions before and after run side by side.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PREVIOUS = importlib.import_module("favorites.migrations.versions.0003_favorites_add_function")
_LOCK_USER = "    PERFORM pg_advisory_xact_lock(p_lock);\n"

CREATE_OR_REPLACE = _PREVIOUS.CREATE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
LOCKS_FIRST = CREATE_OR_REPLACE.replace(
    _LOCK_USER, "    LOCK TABLE ONLY favorites IN ROW EXCLUSIVE MODE;\n" + _LOCK_USER, 1)
assert LOCKS_FIRST != CREATE_OR_REPLACE, "0003's body changed: rewrite this migration"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LOCKS_FIRST)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE_OR_REPLACE)
