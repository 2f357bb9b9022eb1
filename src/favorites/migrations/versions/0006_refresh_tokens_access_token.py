"""Each refresh token row records the access token issued with it (``jti`` and expiry).

Revoking a refresh family (a spent token presented again, or a logout) then also revokes the
access tokens that family handed out and that have not expired yet: a thief who refreshed first
loses the access token too, not only the refresh token, instead of keeping it for up to an hour.

Expand-only: two nullable columns. The version before this one inserts rows without them and
keeps working beside this one; its families' access tokens simply are not revoked with them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.add_column(sa.Column("access_jti", sa.String(64), nullable=True))
        batch.add_column(sa.Column("access_expires_at", TZ, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.drop_column("access_expires_at")
        batch.drop_column("access_jti")
