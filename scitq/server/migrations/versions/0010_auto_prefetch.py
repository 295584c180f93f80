"""auto prefetch: a worker's prefetch may be left to the worker (NULL), which tells its depth

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    # NULL prefetch: the worker sizes its own queue and says how deep (`depth`) in its calls.
    with op.batch_alter_table('worker') as t:
        t.alter_column('prefetch', existing_type=sa.Integer(), nullable=True)
        t.add_column(sa.Column('depth', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('recruiter') as t:
        t.alter_column('prefetch', existing_type=sa.Integer(), nullable=True)


def downgrade():
    op.execute("UPDATE worker SET prefetch = depth WHERE prefetch IS NULL")
    op.execute("UPDATE recruiter SET prefetch = 0 WHERE prefetch IS NULL")
    with op.batch_alter_table('recruiter') as t:
        t.alter_column('prefetch', existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table('worker') as t:
        t.drop_column('depth')
        t.alter_column('prefetch', existing_type=sa.Integer(), nullable=False)
