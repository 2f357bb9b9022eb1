"""An index for the audit rows in which a user acted on someone else (or on nobody).

An erasure pseudonymises the user's audit rows twice over: the rows about them (found by
``ix_audit_log_subject_user_id``) and the rows in which they acted, an admin's reads of other
users' lists for one. The second ``UPDATE … WHERE actor_id = …`` had no index and read the whole
audit log, under the user's lock: at a few hundred thousand rows it took 54 ms, and at production
size (a row per add and remove) it would pass the 5 s statement timeout, failing every erasure.

Partial: a user's rows about themselves (every add and remove, nearly all rows) are found and
pseudonymised through the subject index, so they stay out of this one, and adds and removes do not
pay for a second index.

Expand-only and built ``CONCURRENTLY`` on PostgreSQL (no lock on the table's writes while it is
built); the version before this one never uses it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NAME = "ix_audit_log_actor_elsewhere"
#: The same predicate as ``tables.ACTED_ELSEWHERE``, which the erasure's statement names.
WHERE = "subject_user_id IS NULL OR subject_user_id <> actor_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(NAME, "audit_log", ["actor_id"], postgresql_where=sa.text(WHERE),
                            postgresql_concurrently=True, if_not_exists=True)
    else:
        op.create_index(NAME, "audit_log", ["actor_id"], sqlite_where=sa.text(WHERE))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index(NAME, table_name="audit_log", postgresql_concurrently=True,
                          if_exists=True)
    else:
        op.drop_index(NAME, table_name="audit_log")
