"""task counts: tasks per (batch, status) kept by triggers, so that the dashboard, the batch
list, a batch's summary and /metrics read a few rows instead of counting the task table; and
the index of a batch's tasks of a status in id order

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

# PostgreSQL: one trigger per statement, with its rows as transition tables, adds one row of
# differences per (batch, status) it changed. Only inserts: concurrent writers never wait on
# a counter row (a row updated in place would be locked till commit by each of them, and
# two reports touching two statuses in opposite orders would deadlock).
PG_FUNCTIONS = {
    "insert": "SELECT batch_id, status, count(*) FROM new_rows GROUP BY batch_id, status",
    "delete": "SELECT batch_id, status, -count(*) FROM old_rows GROUP BY batch_id, status",
    # Rows whose status did not change add +1 and -1 to the same key: they cancel out.
    "update": "SELECT batch_id, status, sum(n) FROM (SELECT batch_id, status, 1 AS n FROM new_rows "
              "UNION ALL SELECT batch_id, status, -1 FROM old_rows) d "
              "GROUP BY batch_id, status HAVING sum(n) <> 0",
}
PG_REFERENCING = {"insert": "NEW TABLE AS new_rows", "delete": "OLD TABLE AS old_rows",
                  "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows"}


def _sqlite_bump(row, sign):
    """Statements adding `sign` to the count of the task `row` (NEW or OLD): one row per key
    (SQLite has one writer at a time). A task that is there was counted: OLD's row exists."""
    key = f"batch_id = {row}.batch_id AND status = {row}.status"
    made = (f"INSERT INTO task_count (batch_id, status, n) SELECT {row}.batch_id, {row}.status, 0 "
            f"WHERE NOT EXISTS (SELECT 1 FROM task_count WHERE {key}); ") if row == "NEW" else ""
    return made + f"UPDATE task_count SET n = n + ({sign}) WHERE {key};"


def upgrade():
    op.create_index('ix_task_batch_status_id', 'task', ['batch_id', 'status', 'id'])
    op.drop_index('ix_task_batch_status', table_name='task')
    op.create_table(
        'task_count',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('batch_id', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_task_count_batch_status', 'task_count', ['batch_id', 'status'])
    op.execute("INSERT INTO task_count (batch_id, status, n) "
               "SELECT batch_id, status, count(*) FROM task GROUP BY batch_id, status")
    if op.get_bind().dialect.name == "postgresql":
        for kind, rows in PG_FUNCTIONS.items():
            op.execute(f"CREATE FUNCTION task_count_{kind}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                       f"BEGIN INSERT INTO task_count (batch_id, status, n) {rows}; RETURN NULL; END $$")
            op.execute(f"CREATE TRIGGER task_count_{kind} AFTER {kind.upper()} ON task "
                       f"REFERENCING {PG_REFERENCING[kind]} FOR EACH STATEMENT "
                       f"EXECUTE FUNCTION task_count_{kind}()")
    else:
        op.execute("CREATE TRIGGER task_count_insert AFTER INSERT ON task FOR EACH ROW BEGIN "
                   + _sqlite_bump("NEW", 1) + " END")
        op.execute("CREATE TRIGGER task_count_delete AFTER DELETE ON task FOR EACH ROW BEGIN "
                   + _sqlite_bump("OLD", -1) + " END")
        op.execute("CREATE TRIGGER task_count_update AFTER UPDATE OF batch_id, status ON task "
                   "FOR EACH ROW WHEN OLD.status IS NOT NEW.status OR OLD.batch_id IS NOT NEW.batch_id "
                   "BEGIN " + _sqlite_bump("OLD", -1) + " " + _sqlite_bump("NEW", 1) + " END")


def downgrade():
    op.create_index('ix_task_batch_status', 'task', ['batch_id', 'status'])
    op.drop_index('ix_task_batch_status_id', table_name='task')
    for kind in PG_FUNCTIONS:
        op.execute(f"DROP TRIGGER IF EXISTS task_count_{kind}"
                   + (" ON task" if op.get_bind().dialect.name == "postgresql" else ""))
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP FUNCTION task_count_{kind}()")
    op.drop_index('ix_task_count_batch_status', table_name='task_count')
    op.drop_table('task_count')
