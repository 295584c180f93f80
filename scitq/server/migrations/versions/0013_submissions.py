"""submissions: the chunks of tasks stored under a client's submission id (idempotent add_tasks)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'submission',
        sa.Column('id', sa.String(length=255), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('first_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('last_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('ids', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'))


def downgrade():
    op.drop_table('submission')
