"""pending index: claims walk only the pending tasks, oldest first

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")


def upgrade():
    op.create_index('ix_task_pending', 'task', ['id'], postgresql_where=PENDING, sqlite_where=PENDING)


def downgrade():
    op.drop_index('ix_task_pending', table_name='task')
