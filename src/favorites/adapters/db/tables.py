"""Table definitions shared by the repositories and the migrations' autogenerate check.

``user_id`` leads every user-owned key so the schema stays Citus-compatible (it is the
distribution column) and hash partitioning by user keeps each user's rows in one partition.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TZ = sa.DateTime(timezone=True)

favorites = sa.Table(
    "favorites",
    metadata,
    sa.Column("user_id", sa.Uuid(), primary_key=True),
    sa.Column("product_id", sa.Uuid(), primary_key=True),
    sa.Column("created_at", TZ, nullable=False),
    sa.Index("ix_favorites_product_id", "product_id"),
    sa.Index("ix_favorites_user_created", "user_id", sa.text("created_at DESC"), "product_id"),
)

products = sa.Table(
    "products",
    metadata,
    sa.Column("product_id", sa.Uuid(), primary_key=True),
    sa.Column("deleted_at", TZ, nullable=True),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_id", sa.Uuid(), primary_key=True),
    sa.Column("family_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("user_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("roles", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("issued_at", TZ, nullable=False),
    sa.Column("expires_at", TZ, nullable=False),
    sa.Column("used_at", TZ, nullable=True),
    sa.Column("revoked_at", TZ, nullable=True),
    # The access token issued with this refresh token: revoked with the family (0006).
    sa.Column("access_jti", sa.String(64), nullable=True),
    sa.Column("access_expires_at", TZ, nullable=True),
)

revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("revoked_at", TZ, nullable=False, index=True),
    sa.Column("expires_at", TZ, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("occurred_at", TZ, nullable=False),
    sa.Column("actor_id", sa.String(128), nullable=False),
    sa.Column("actor_type", sa.String(16), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject_user_id", sa.String(64), nullable=True, index=True),
    sa.Column("product_id", sa.Uuid(), nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
)
#: Rows in which the actor is not the subject: an admin's reads, a service's changes (migration
#: 0008's partial index, which the erasure's second statement names to use it).
ACTED_ELSEWHERE = sa.or_(audit_log.c.subject_user_id.is_(None),
                         audit_log.c.subject_user_id != audit_log.c.actor_id)
sa.Index("ix_audit_log_actor_elsewhere", audit_log.c.actor_id,
         postgresql_where=ACTED_ELSEWHERE, sqlite_where=ACTED_ELSEWHERE)

#: One row (id 1): the cache epoch, see ``favorites.adapters.cache.epoch`` (migration 0002).
cache_epoch = sa.Table(
    "cache_epoch",
    metadata,
    sa.Column("id", sa.Integer(), autoincrement=False, primary_key=True),
    sa.Column("epoch", sa.BigInteger(), nullable=False),
)
