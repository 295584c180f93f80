"""worker set on server: the settings the server gave a worker, kept over its restarts

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    # NULL: nothing set on the server yet, so the worker's own flags apply at registration.
    with op.batch_alter_table('worker') as t:
        t.add_column(sa.Column('set_on_server', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('worker') as t:
        t.drop_column('set_on_server')
