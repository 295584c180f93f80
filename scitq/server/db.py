"""The database: engine, sessions, the SQLite writer lock, the locks of the passes that run in
one server process at a time, migrations and the event log."""
import collections
import contextlib
import os
import threading
from pathlib import Path

from sqlalchemy import create_engine, event as sa_event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from scitq.errors import BadRequest, NotFound
from scitq.server import dialect
# Importable from here as they always were (callers need not know which SQL differs by database).
from scitq.server.dialect import FEW_ROWS, among, insert_rows, insert_with_ids, next_ids  # noqa: F401
from scitq.server.models import MAX_ID, Event, utcnow

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url):
    """Accept the URLs people type (postgresql://...) and pick the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise BadRequest(f"not a database URL: {url!r}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise BadRequest(f"unsupported database {parsed.drivername!r}: use sqlite:/// or postgresql://")
    return parsed


class Database:
    """One per server process. Writes go through `write()`, reads through `read()`.

    SQLite has one writer at a time: rather than let threads race for its lock and fail
    with 'database is locked', writers queue on a process lock (the server is the only
    process that opens the file).
    """

    def __init__(self, url):
        self.url = normalize_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            _private_file(self.url.database)
            self.engine = create_engine(self.url, connect_args={"timeout": 30})
            sa_event.listen(self.engine, "connect", dialect.sqlite_pragmas)
            self._writer = threading.RLock()
        else:
            # No ping before each checkout: it was one more round trip per transaction (about
            # 3 ms of an idle worker's 24 ms submit-to-start). A connection PostgreSQL dropped
            # fails its request with a 503 (api: connection_invalidated) and SQLAlchemy then
            # replaces every older pooled connection.
            # LIFO: the connections used last are used again, so their prepared statements and
            # PostgreSQL's caches behind them stay warm; the rest of the pool idles.
            self.engine = create_engine(self.url, pool_size=20, max_overflow=80, pool_use_lifo=True)
            self._writer = contextlib.nullcontext()
        self._passes = collections.defaultdict(threading.Lock)    # SQLite: name -> its pass lock
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        # Called with {kind: n} of the events of each transaction that commits (metrics).
        self.on_events = []
        sa_event.listen(self.engine, "commit", self._committed)
        sa_event.listen(self.engine, "rollback", _forget_events)
        sa_event.listen(self.Session, "after_flush", _flushed)
        sa_event.listen(self.Session, "before_commit", _write_events)
        sa_event.listen(self.Session, "after_transaction_end", _drop_events)

    def _committed(self, conn):
        kinds = conn.info.pop(EVENTS_KEY, None)
        if kinds:
            for listener in self.on_events:
                listener(kinds)

    @contextlib.contextmanager
    def read(self):
        """A session for reading. On PostgreSQL it ends by COMMIT, not by the ROLLBACK a closed
        session sends: psycopg forgets every prepared statement of a connection at each
        rollback, so with reads on every pooled connection no statement was ever prepared,
        and each was parsed and planned again (a third of a dispatch pass's time)."""
        with self.Session() as session:
            yield session
            if not self.is_sqlite and not (session.info.get(FLUSHED) or session.new or session.dirty
                                           or session.deleted):
                session.commit()        # (what a read session changed is still dropped)

    @contextlib.contextmanager
    def write(self):
        """A session committed at the end of the block, rolled back on error."""
        with self._writer, self.Session() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextlib.contextmanager
    def once(self, name, wait=True, item=None):
        """Run the block in one server process at a time, across transactions: a pass that
        observes, asks a provider outside any transaction, then applies; with `item` (an
        id), one lock of that name per item (a job while it runs). Yields whether it holds
        the lock (with wait=False another process may hold it: then skip).

        PostgreSQL: a session advisory lock on a connection of its own, idle (no transaction
        open) while the block runs, and released by PostgreSQL if this process dies; SQLite
        (one server process by design): a process lock."""
        if self.is_sqlite:
            lock = self._passes[(name, item)]
            got = lock.acquire(blocking=wait)
            try:
                yield got
            finally:
                if got:
                    lock.release()
                    if item is not None:
                        self._passes.pop((name, item), None)
            return
        conn = self.engine.connect()
        got = False
        try:
            got = dialect.lock_session(conn, LOCKS[name], item, wait)
            conn.commit()
            yield got
        finally:
            if got:
                try:
                    dialect.unlock_session(conn, LOCKS[name], item)
                    conn.commit()
                except Exception:       # a broken connection: its end releases the lock
                    conn.invalidate()
            conn.close()

    def migrate(self):
        """Bring the schema to the newest revision (idempotent)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._writer, self.engine.begin() as conn:
            # Two servers started at once on a fresh PostgreSQL both created the tables (one
            # failed on a duplicate key): the second now waits, then finds the head applied.
            dialect.lock_transaction(conn, LOCKS["migrate"])
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def dispose(self):
        self.engine.dispose()

    def describe(self):
        """The URL to print at start, without password."""
        if self.is_sqlite:
            return f"SQLite file {self.url.database}"
        return self.url.render_as_string(hide_password=True)


# PostgreSQL advisory lock keys of what must run in one server process at a time.
LOCKS = {
    "dispatch": 0x5C17D15,          # a dispatch pass, and a capped batch's inline claims
    "rollups": 0x5C17_0008,         # a rollup pass and the task counts' compaction
    "reconciler": 0x5C17_0010,      # a recruitment pass: observe, ask the providers, apply
    "provider_sweep": 0x5C17_0011,  # the listing of the providers' hosts (evictions, orphans)
    "lease_sweep": 0x5C17_0012,     # workers silent past their lease
    "jobs": 0x5C17_0013,            # the job runner's claims
    "job": 0x5C17_0014,             # with a job's id: held by the server process running it
    "migrate": 0x5C17_0015,         # a migration of the schema
}


def lock_in(session, name, wait=True):
    """Hold `name` (LOCKS) until the caller's transaction ends; returns whether it holds it
    (wait=False: another process's transaction may). SQLite has one writer at a time, in
    one server process: nothing to take."""
    return dialect.lock_transaction(session, LOCKS[name], wait)


def _private_file(path):
    """The SQLite file made (or kept) mode 0600 before SQLite opens it: its -wal and -shm
    files take the database's mode."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    except OSError:         # a read-only place or not ours: SQLite says why when it opens it
        pass


def get_or_404(session, model, ident):
    """The row of this id; NotFound (a 404) when there is none."""
    obj = session.get(model, ident) if 0 <= ident <= MAX_ID else None
    if obj is None:
        raise NotFound(f"no {model.__tablename__} {ident}")
    return obj


def lookup(session, model, ref):
    """A batch or worker by id (an int, or digits) or by name; NotFound otherwise."""
    if isinstance(ref, int) or (ref.isascii() and ref.isdigit()):
        obj = session.get(model, int(ref)) if int(ref) <= MAX_ID else None
    elif "\x00" in ref:        # no name holds one (PostgreSQL cannot even compare it)
        obj = None
    else:
        obj = session.scalar(select(model).where(model.name == ref))
    if obj is None:
        raise NotFound(f"no {model.__tablename__} {ref!r}")
    return obj


EVENTS_KEY = "scitq.events"     # in a connection's info: the kinds of its transaction's events


def _note_events(conn, kinds):
    """Remember the events of the transaction under way, for Database.on_events at commit."""
    conn.info.setdefault(EVENTS_KEY, collections.Counter()).update(kinds)


def _forget_events(conn):
    conn.info.pop(EVENTS_KEY, None)


FLUSHED = "scitq.flushed"       # in a session's info: it sent changes (a read session then rolls back)


def _flushed(session, _context):
    session.info[FLUSHED] = True


def event_row(kind, object_type, object_id, detail=None, at=None):
    """An event row for add_events: what changed (kind), on which object, with what detail."""
    return {"at": at or utcnow(), "kind": kind, "object_type": object_type,
            "object_id": object_id, "detail": detail or None}


PENDING_EVENTS = "scitq.pending_events"     # in a session's info: event rows to write at commit


def add_events(session, rows):
    """The one way event rows are written (event_row dicts, in order), in the session's own
    transaction. They are written when it commits, all of them by one statement (by COPY on
    PostgreSQL past a few): a worker's report and the claim in its answer made two inserts
    of one or two rows each, a seventh of the request's statements. Nothing reads a
    transaction's own events back before it commits."""
    if rows:
        session.info.setdefault(PENDING_EVENTS, []).extend(rows)


def _write_events(session):
    rows = session.info.pop(PENDING_EVENTS, None)
    if rows:
        conn = session.connection()
        _note_events(conn, (row["kind"] for row in rows))
        insert_rows(conn, Event.__table__, rows)


def _drop_events(session, transaction):
    if transaction.parent is None:      # rolled back (a commit wrote and took them already)
        session.info.pop(PENDING_EVENTS, None)


def record(session, kind, obj, **detail):
    """Add the event of one object's state change to the change's own transaction."""
    add_events(session, [event_row(kind, type(obj).__tablename__, obj.id, detail)])
