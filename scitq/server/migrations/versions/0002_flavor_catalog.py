"""flavor catalog

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('flavor',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('region', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('cpu', sa.Integer(), nullable=False),
    sa.Column('ram', sa.Double(), nullable=False),
    sa.Column('disk', sa.Double(), nullable=False),
    sa.Column('gpu', sa.Integer(), nullable=False),
    sa.Column('gpu_model', sa.String(length=64), nullable=True),
    sa.Column('hourly_cost', sa.Double(), nullable=True),
    sa.Column('spot', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('provider', 'region', 'name', 'spot')
    )
    with op.batch_alter_table('flavor', schema=None) as batch_op:
        batch_op.create_index('ix_flavor_search', ['cpu', 'ram'], unique=False)



def downgrade():
    with op.batch_alter_table('flavor', schema=None) as batch_op:
        batch_op.drop_index('ix_flavor_search')

    op.drop_table('flavor')
