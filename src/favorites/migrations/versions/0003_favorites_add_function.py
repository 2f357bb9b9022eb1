"""favorites_add(): adding one favorite, its per-user cap and its audit row in one round trip.

PostgreSQL only (SQLite runs the same steps from ``repository``). Expand-only: a new function,
nothing existing changes, so the previous version keeps running beside this one.

Why a function and not one statement: the cap is only exact when the count is taken after the
user's advisory lock is held, and every statement of one query shares the snapshot taken before
the lock was granted; a PL/pgSQL function's statements each take a new one. The same steps as
separate statements cost six round trips (BEGIN, lock, insert, count, audit, COMMIT), which was
most of an add's CPU in this service and in the database.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: Outcome 'exists' (stored_at: the favorite already held), 'full' (the user holds ``p_limit``
#: favorites: nothing changed) or 'created' (row and audit row inserted).
CREATE = """
CREATE FUNCTION favorites_add(
    p_lock bigint, p_user_id uuid, p_product_id uuid, p_created_at timestamptz, p_limit integer,
    p_actor_id varchar, p_actor_type varchar, p_action varchar, p_subject_user_id varchar,
    p_request_id varchar, p_outcome varchar,
    OUT result text, OUT stored_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    SELECT f.created_at INTO stored_at FROM favorites f
     WHERE f.user_id = p_user_id AND f.product_id = p_product_id;
    IF FOUND THEN
        result := 'exists';
        RETURN;
    END IF;
    IF (SELECT count(*) FROM favorites f WHERE f.user_id = p_user_id) >= p_limit THEN
        result := 'full';
        RETURN;
    END IF;
    INSERT INTO favorites (user_id, product_id, created_at)
    VALUES (p_user_id, p_product_id, p_created_at);
    INSERT INTO audit_log (occurred_at, actor_id, actor_type, action, subject_user_id,
                           product_id, request_id, outcome)
    VALUES (p_created_at, p_actor_id, p_actor_type, p_action, p_subject_user_id,
            p_product_id, p_request_id, p_outcome);
    result := 'created';
    stored_at := p_created_at;
END
$$
"""

DROP = ("DROP FUNCTION IF EXISTS favorites_add(bigint, uuid, uuid, timestamptz, integer, varchar,"
        " varchar, varchar, varchar, varchar, varchar)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP)
