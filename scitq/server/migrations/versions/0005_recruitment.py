"""recruitment: recruiters, instances (the cost ledger), workers' idle time

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
UTC = sa.DateTime(timezone=True)


def upgrade():
    op.create_table('recruiter',
    sa.Column('id', ID, nullable=False),
    sa.Column('batch_id', ID, nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('regions', sa.JSON(), nullable=True),
    sa.Column('flavor', sa.String(length=128), nullable=True),
    sa.Column('min_cpu', sa.Integer(), nullable=True),
    sa.Column('min_ram', sa.Double(), nullable=True),
    sa.Column('min_disk', sa.Double(), nullable=True),
    sa.Column('gpu', sa.Boolean(), nullable=False),
    sa.Column('spot', sa.Boolean(), nullable=False),
    sa.Column('max_workers', sa.Integer(), nullable=False),
    sa.Column('tasks_per_worker', sa.Integer(), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('prefetch', sa.Integer(), nullable=False),
    sa.Column('idle_timeout', sa.Double(), nullable=False),
    sa.Column('max_hourly_cost', sa.Double(), nullable=True),
    sa.Column('budget', sa.Double(), nullable=True),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('created_at', UTC, nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batch.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('recruiter', schema=None) as b:
        b.create_index(b.f('ix_recruiter_batch_id'), ['batch_id'], unique=False)
    op.create_table('instance',
    sa.Column('id', ID, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('recruiter_id', ID, nullable=True),
    sa.Column('batch_id', ID, nullable=True),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('region', sa.String(length=64), nullable=False),
    sa.Column('flavor', sa.String(length=128), nullable=False),
    sa.Column('spot', sa.Boolean(), nullable=False),
    sa.Column('hourly_cost', sa.Double(), nullable=True),
    sa.Column('provider_id', sa.String(length=255), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.String(length=1024), nullable=True),
    sa.Column('created_at', UTC, nullable=False),
    sa.Column('deleted_at', UTC, nullable=True),
    sa.Column('cost', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batch.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['recruiter_id'], ['recruiter.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('instance', schema=None) as b:
        b.create_index('ix_instance_status', ['status'], unique=False)
        b.create_index(b.f('ix_instance_batch_id'), ['batch_id'], unique=False)
        b.create_index(b.f('ix_instance_recruiter_id'), ['recruiter_id'], unique=False)
    with op.batch_alter_table('worker', schema=None) as b:
        b.add_column(sa.Column('idle_since', UTC, nullable=True))


def downgrade():
    with op.batch_alter_table('worker', schema=None) as b:
        b.drop_column('idle_since')
    op.drop_table('instance')
    op.drop_table('recruiter')
