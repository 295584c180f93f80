"""recruiter deploy timeout: each recruiter may give its hosts their own time to deploy

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    # NULL: the server's deploy timeout (RECRUIT's deploy_timeout), as before this column.
    with op.batch_alter_table('recruiter') as t:
        t.add_column(sa.Column('deploy_timeout', sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table('recruiter') as t:
        t.drop_column('deploy_timeout')
