"""Messages ordered by a per-session position, not by the clock.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:52:08.293833
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ai_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("position", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index("ix_ai_messages_session_position", ["session_id", "position"], unique=False)

    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_count", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.drop_column("message_count")

    with op.batch_alter_table("ai_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_messages_session_position")
        batch_op.drop_column("position")
