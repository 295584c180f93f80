"""task semantics: retries, timeouts, staging, containers, cache, signals, batch cap

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade():
    with op.batch_alter_table('batch', schema=None) as b:
        b.add_column(sa.Column('concurrency', sa.Integer(), nullable=True))
    with op.batch_alter_table('task', schema=None) as b:
        b.add_column(sa.Column('reason', sa.String(length=1024), nullable=True))
        b.add_column(sa.Column('retries', sa.Integer(), nullable=False, server_default='0'))
        b.add_column(sa.Column('retry_delay', sa.Double(), nullable=False, server_default='0'))
        b.add_column(sa.Column('retry_backoff', sa.Double(), nullable=False, server_default='1'))
        b.add_column(sa.Column('not_before', UTC, nullable=True))
        b.add_column(sa.Column('timeout', sa.Double(), nullable=True))
        b.add_column(sa.Column('staging_timeout', sa.Double(), nullable=True))
        b.add_column(sa.Column('container', sa.String(length=512), nullable=True))
        b.add_column(sa.Column('container_options', sa.Text(), nullable=True))
        b.add_column(sa.Column('inputs', sa.JSON(), nullable=True))
        b.add_column(sa.Column('resources', sa.JSON(), nullable=True))
        b.add_column(sa.Column('output', sa.String(length=4096), nullable=True))
        b.add_column(sa.Column('use_cache', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('execution', schema=None) as b:
        b.add_column(sa.Column('reason', sa.String(length=32), nullable=True))
        b.add_column(sa.Column('signal', sa.String(length=16), nullable=True))
        b.add_column(sa.Column('signal_seq', sa.Integer(), nullable=False, server_default='0'))
        b.add_column(sa.Column('paused', sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column('cache_key', sa.String(length=64), nullable=True))
        b.add_column(sa.Column('cached_from', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                               nullable=True))
        b.create_index('ix_execution_cache_key', ['cache_key'], unique=False)


def downgrade():
    with op.batch_alter_table('execution', schema=None) as b:
        b.drop_index('ix_execution_cache_key')
        for col in ('cached_from', 'cache_key', 'paused', 'signal_seq', 'signal', 'reason'):
            b.drop_column(col)
    with op.batch_alter_table('task', schema=None) as b:
        for col in ('use_cache', 'output', 'resources', 'inputs', 'container_options', 'container',
                    'staging_timeout', 'timeout', 'not_before', 'retry_backoff', 'retry_delay',
                    'retries', 'reason'):
            b.drop_column(col)
    with op.batch_alter_table('batch', schema=None) as b:
        b.drop_column('concurrency')
