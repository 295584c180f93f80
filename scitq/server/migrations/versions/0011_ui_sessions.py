"""ui sessions: the web UI's logins, kept on the server (the browser holds a random id only)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'ui_session',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('token_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['token_id'], ['token.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_ui_session_token_id', 'ui_session', ['token_id'])


def downgrade():
    op.drop_index('ix_ui_session_token_id', 'ui_session')
    op.drop_table('ui_session')
