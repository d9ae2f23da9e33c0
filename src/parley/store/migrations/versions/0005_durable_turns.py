"""Durable turns: the database says which process runs a session's turn and whether to stop it.

`stream_number` numbers the session's event streams (the first half of every SSE event id),
`lease_owner` names the process that holds the turn lease, and `stop_requested_at` is the Stop
flag the running turn honours wherever it runs. An index finds the leases to recover.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from parley.store.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stream_number", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("stop_requested_at", UTCDateTime(), nullable=True))
        batch_op.create_index("ix_ai_sessions_lease_expires_at", ["lease_expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_sessions_lease_expires_at")
        batch_op.drop_column("stop_requested_at")
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("stream_number")
