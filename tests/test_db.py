"""The schema: migrations build exactly the models, and applying them again changes nothing."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event as sa_event
from sqlalchemy import inspect, select, text

from scitq.errors import BadRequest
from scitq.server.db import MIGRATIONS, Database, lock_in, normalize_url
from scitq.server.models import Base, Batch


def test_migrations_match_the_models_and_are_idempotent(db_url):
    db = Database(db_url)
    try:
        db.migrate()
        db.migrate()    # a restart applies nothing new
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
            assert MigrationContext.configure(conn).get_current_revision() == head
        tables = set(inspect(db.engine).get_table_names())
        assert {"batch", "task", "task_dependency", "execution", "worker", "event", "flavor", "job"} <= tables
    finally:
        db.dispose()


def test_two_servers_migrating_a_fresh_postgresql_at_once_both_start(pg_db):
    """Server processes started together on an empty PostgreSQL database: each migrates, one
    after the other, and none fails (they raced: a duplicate key for the loser). SQLite has
    one server process by design."""
    import threading
    dbs = [Database(pg_db) for _ in range(3)]
    start, errors = threading.Barrier(len(dbs)), []

    def migrate(db):
        start.wait()
        try:
            db.migrate()
        except Exception as exc:        # what a server would die of at start
            errors.append(exc)
    threads = [threading.Thread(target=migrate, args=(db,)) for db in dbs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        with dbs[0].engine.connect() as conn:
            head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
            assert MigrationContext.configure(conn).get_current_revision() == head
    finally:
        for db in dbs:
            db.dispose()


def test_postgresql_urls_as_people_type_them():
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(BadRequest):
        normalize_url("mysql://u@h/db")
    with pytest.raises(BadRequest):
        normalize_url("not a url")


def test_insert_rows_keeps_order_defaults_json_and_odd_text(db_url):
    """The bulk path (COPY on PostgreSQL) stores what an INSERT would: Python defaults,
    JSON, NULLs, text COPY would otherwise read as escapes, in order."""
    from sqlalchemy import insert

    from scitq.server.db import add_events, insert_rows
    from scitq.server.models import Event, Task, utcnow

    db = Database(db_url)
    try:
        db.migrate()
        with db.write() as s:
            batch = Batch(name="b")
            s.add(batch)
            s.flush()
            odd = ["tab\there", "new\nline", "back\\slash \\N", "quote ' \" é ∑", ""]
            add_events(s, [
                {"at": utcnow(), "kind": "k", "object_type": "task", "object_id": i,
                 "detail": None if i == 0 else {"text": t, "n": [i, None]}}
                for i, t in enumerate(odd)])
            insert_rows(s.connection(), Task.__table__, [
                {"batch_id": batch.id, "command": t, "inputs": [t] if t else None} for t in odd])
            s.execute(insert(Task.__table__), [{"batch_id": batch.id, "command": "by insert"}])
        with db.read() as s:
            events = s.scalars(select(Event).where(Event.kind == "k").order_by(Event.id)).all()
            assert [e.object_id for e in events] == list(range(len(odd)))
            assert [e.detail for e in events] == [None] + [{"text": t, "n": [i, None]}
                                                           for i, t in enumerate(odd) if i]
            tasks = s.scalars(select(Task).order_by(Task.id)).all()
            assert [t.command for t in tasks] == odd + ["by insert"]
            assert [t.inputs for t in tasks[:-1]] == [[t] if t else None for t in odd]
            reference = tasks[-1].to_dict()
            for t in tasks[:-1]:
                d = t.to_dict()
                # every default an INSERT fills, COPY filled too
                unset = {k for k, v in d.items() if v is None} - {"inputs"}
                assert unset == {k for k, v in reference.items() if v is None} - {"inputs"}
                assert (t.status, t.attempt, t.retries, t.shell, t.use_cache) == ("pending", 0, 0, True, False)
                assert t.created_at is not None and t.updated_at is not None
    finally:
        db.dispose()


def test_a_transactions_events_go_at_its_commit_by_one_statement_and_a_rollback_drops_them(db_url):
    """add_events keeps a transaction's events till its commit, then writes them all, in
    order, by one statement; a transaction rolled back writes none."""
    from scitq.server.db import add_events, event_row
    from scitq.server.models import Event

    db = Database(db_url)
    statements = []

    def count(conn, cursor, statement, *args):
        if "event" in statement.split("(")[0].lower():
            statements.append(statement)

    sa_event.listen(db.engine, "before_cursor_execute", count)
    try:
        db.migrate()
        statements.clear()
        with db.write() as s:
            add_events(s, [event_row("k.one", "task", 1)])
            add_events(s, [event_row("k.two", "task", 2), event_row("k.three", "task", 3, {"n": 3})])
            assert statements == []         # nothing written yet
        assert len(statements) == 1
        with pytest.raises(RuntimeError), db.write() as s:
            add_events(s, [event_row("k.four", "task", 4)])
            raise RuntimeError("changed its mind")
        with db.write() as s:
            pass
        assert len(statements) == 1
        with db.read() as s:
            kinds = s.execute(select(Event.kind, Event.object_id, Event.detail)
                              .where(Event.kind.like("k.%")).order_by(Event.id)).all()
        assert kinds == [("k.one", 1, None), ("k.two", 2, None), ("k.three", 3, {"n": 3})]
    finally:
        sa_event.remove(db.engine, "before_cursor_execute", count)
        db.dispose()


def test_a_pass_held_by_once_is_held_by_one_server_process_at_a_time(db_url):
    """Database.once: while one holder runs its pass (between transactions), another server
    process's try gets nothing, a pass of another name goes on, and the lock is free after;
    lock_in holds a name for one transaction. On SQLite (one server process) the holder is a
    process lock of the one Database."""
    first = Database(db_url)
    other = first if first.is_sqlite else Database(db_url)     # another process's engine
    try:
        with first.once("reconciler") as held:
            assert held
            with other.write() as s:        # no transaction of the holder is open meanwhile
                s.execute(text("SELECT 1"))
            with other.once("reconciler", wait=False) as second:
                assert not second
            with other.once("provider_sweep", wait=False) as elsewhere:
                assert elsewhere
        with other.once("reconciler", wait=False) as after:
            assert after
        if not first.is_sqlite:
            with first.write() as s, other.write() as s2:
                assert lock_in(s, "jobs", wait=False)
                assert not lock_in(s2, "jobs", wait=False)
            with other.write() as s2:       # the first transaction ended: free
                assert lock_in(s2, "jobs", wait=False)
    finally:
        first.dispose()
        other.dispose()


def test_get_or_404_one_rule_for_every_row_by_id(db_url):
    """Tasks, executions, jobs, recruiters and instances are fetched by id through one helper:
    the row, or NotFound naming the table and the id (an id past the column's range too)."""
    from scitq.errors import NotFound
    from scitq.server.db import get_or_404
    from scitq.server.models import MAX_ID, Job, Recruiter
    db = Database(db_url)
    try:
        db.migrate()
        with db.write() as s:
            job = Job(kind="deploy", target="h1", params={})
            s.add(job)
            s.flush()
            assert get_or_404(s, Job, job.id) is job
            for model, ident in ((Job, job.id + 1), (Recruiter, 1), (Job, MAX_ID + 1)):
                with pytest.raises(NotFound, match=f"^no {model.__tablename__} {ident}$"):
                    get_or_404(s, model, ident)
    finally:
        db.dispose()


def test_a_read_session_drops_what_it_changed_and_keeps_prepared_statements(db_url):
    """A read session stores nothing, whatever it changed (flushed or not). On PostgreSQL it
    ends by COMMIT, since psycopg forgets a connection's prepared statements at each
    ROLLBACK: a query read again and again is then prepared once, as on a write session's
    connection."""
    db = Database(db_url)
    try:
        db.migrate()
        with db.write() as s:
            s.add(Batch(name="kept"))
        with db.read() as s:
            s.scalars(select(Batch)).one().name = "changed, not flushed"
        with db.read() as s:
            s.scalars(select(Batch)).one().name = "changed and flushed"
            s.flush()
        with db.read() as s:
            s.add(Batch(name="added"))
        with db.read() as s:
            assert s.scalars(select(Batch.name)).all() == ["kept"]
        if db.is_sqlite:
            return
        for _ in range(8):      # psycopg prepares a query at its fifth run on a connection
            with db.read() as s:
                assert s.scalar(select(Batch.name).where(Batch.name == "kept")) == "kept"
        with db.read() as s:
            prepared = s.scalars(text("SELECT statement FROM pg_prepared_statements")).all()
        assert any("FROM batch" in statement for statement in prepared), prepared
    finally:
        db.dispose()
