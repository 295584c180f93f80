"""tokens: API tokens with roles, kept hashed

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
UTC = sa.DateTime(timezone=True)


def upgrade():
    op.create_table('token',
    sa.Column('id', ID, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('worker_id', ID, nullable=True),
    sa.Column('created_at', UTC, nullable=False),
    sa.Column('revoked_at', UTC, nullable=True),
    sa.ForeignKeyConstraint(['worker_id'], ['worker.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hash')
    )


def downgrade():
    op.drop_table('token')
