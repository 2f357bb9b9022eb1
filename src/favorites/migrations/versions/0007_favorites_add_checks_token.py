"""favorites_add() refuses a revoked access token, checked under the user's lock.

Every instance refuses a revoked token from its in-memory list, which it pulls from the database
every second. For most revocations that second is harmless. After a GDPR erasure it is not: an
instance that has not pulled the erasure's revocations yet would let the erased user's access
token add favorites again, after the erasure answered, and keep them (with a ``favorite.added``
audit row naming the user). So the add looks the token up in ``revoked_tokens`` itself, after it
has taken the user's advisory lock; the erasure takes the same lock before it deletes, so the add
either ran before it (and is deleted by it) or sees its revocations.

Expand-only: an overload with one more argument (``p_token_id``; NULL checks nothing), so the
version before this one keeps calling the twelve-argument function beside it. The body is 0005's
with the check after the lock, spelled out so this migration does not change when an older one
is read differently.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: Outcomes as in 0005, and 'revoked' (``p_token_id`` is in ``revoked_tokens``: nothing changed).
CREATE = """
CREATE FUNCTION favorites_add(
    p_lock bigint, p_user_id uuid, p_product_id uuid, p_created_at timestamptz, p_limit integer,
    p_actor_id varchar, p_actor_type varchar, p_action varchar, p_subject_user_id varchar,
    p_request_id varchar, p_outcome varchar, p_require_product boolean,
    p_token_id varchar,
    OUT result text, OUT stored_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_require_product THEN
        PERFORM 1 FROM products p
         WHERE p.product_id = p_product_id AND p.deleted_at IS NULL
           FOR SHARE;
        IF NOT FOUND THEN
            result := 'no_product';
            RETURN;
        END IF;
    END IF;
    LOCK TABLE ONLY favorites IN ROW EXCLUSIVE MODE;
    PERFORM pg_advisory_xact_lock(p_lock);
    -- After the user's lock, which an erasure holds until it commits: a token it revoked is
    -- seen here even by an instance whose in-memory list has not caught up yet.
    IF p_token_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM revoked_tokens r WHERE r.jti = p_token_id) THEN
        result := 'revoked';
        RETURN;
    END IF;
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
        " varchar, varchar, varchar, varchar, varchar, boolean, varchar)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP)
