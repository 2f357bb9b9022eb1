"""Cache epoch: a counter every cache key includes, bumped when an invalidation is lost.

Expand-only (a new table, nothing existing changes), so the previous version keeps running beside
this one. Seeded with one row; see ``favorites.adapters.cache.epoch``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "cache_epoch",
        sa.Column("id", sa.Integer(), autoincrement=False, primary_key=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "epoch": 0}])


def downgrade() -> None:
    op.drop_table("cache_epoch")
