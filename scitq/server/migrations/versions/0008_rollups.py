"""rollups: tasks ended, busy slots and cost per minute, for the UI's charts; the attempts
a job made before its last retry

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'minute_rollup',
        sa.Column('batch_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('worker_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('minute', sa.DateTime(timezone=True), nullable=False),
        sa.Column('succeeded', sa.Integer(), nullable=False),
        sa.Column('failed', sa.Integer(), nullable=False),
        sa.Column('busy', sa.Integer(), nullable=True),
        sa.Column('slots', sa.Integer(), nullable=True),
        sa.Column('cost', sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint('batch_id', 'worker_id', 'minute'),
    )
    op.create_index('ix_minute_rollup_worker', 'minute_rollup', ['worker_id'])
    op.create_index('ix_execution_ended_at', 'execution', ['ended_at'])
    op.add_column('job', sa.Column('earlier_attempts', sa.Integer(), server_default=sa.text('0'),
                                   nullable=False))


def downgrade():
    op.drop_column('job', 'earlier_attempts')
    op.drop_index('ix_execution_ended_at', table_name='execution')
    op.drop_index('ix_minute_rollup_worker', table_name='minute_rollup')
    op.drop_table('minute_rollup')
