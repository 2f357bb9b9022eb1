"""favorites_add() checks the product too: an add in the local catalog is one round trip.

With no product service, the catalog is the ``products`` table on the same primary. Asking it
first took a unit of work of its own (a pooled connection, one statement, its cache entry read
and written), about as much of the service's CPU as the add itself when the product was not
cached yet. Here the function looks the product up before it takes any lock, and answers
``no_product`` without writing when it is unknown or deleted.

The look-up takes a share lock on the product's row (``FOR SHARE``) until the add commits: a
deletion (``UPDATE products SET deleted_at``) then waits for the add, so the purge that follows
it finds the new favorite. Without the lock, an add that checked the product and then waited for
the user's lock could insert after the deletion and its purge, leaving a favorite of a deleted
product for good. (A key-share lock would not do: the deletion changes no key column.)

Expand-only: an overload with one more argument (``p_require_product``), so the version before
this one keeps calling the eleven-argument function beside it; a later release may drop that.
The body is 0004's with the check in front, spelled out so this migration does not change when
an older one is read differently.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: Outcome 'no_product' (``p_require_product`` and the product is unknown or deleted: nothing
#: changed), 'exists' (stored_at: the favorite already held), 'full' (the user holds
#: ``p_limit`` favorites: nothing changed) or 'created' (row and audit row inserted).
CREATE = """
CREATE FUNCTION favorites_add(
    p_lock bigint, p_user_id uuid, p_product_id uuid, p_created_at timestamptz, p_limit integer,
    p_actor_id varchar, p_actor_type varchar, p_action varchar, p_subject_user_id varchar,
    p_request_id varchar, p_outcome varchar, p_require_product boolean,
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
        " varchar, varchar, varchar, varchar, varchar, boolean)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP)
