"""The database: engine, sessions, the SQLite writer lock, the locks of the passes that run in
one server process at a time, migrations and the event log."""
import collections
import contextlib
import json
import os
import threading
from pathlib import Path

from sqlalchemy import JSON, create_engine, event as sa_event, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean

from scitq.errors import BadRequest, NotFound
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
            sa_event.listen(self.engine, "connect", _sqlite_pragmas)
            self._writer = threading.RLock()
        else:
            # No ping before each checkout: it was one more round trip per transaction (about
            # 3 ms of an idle worker's 24 ms submit-to-start). A connection PostgreSQL dropped
            # fails its request with a 503 (api: connection_invalidated) and SQLAlchemy then
            # replaces every older pooled connection.
            self.engine = create_engine(self.url, pool_size=20, max_overflow=80)
            self._writer = contextlib.nullcontext()
        self._passes = collections.defaultdict(threading.Lock)    # SQLite: name -> its pass lock
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        # Called with {kind: n} of the events of each transaction that commits (metrics).
        self.on_events = []
        sa_event.listen(self.engine, "commit", self._committed)
        sa_event.listen(self.engine, "rollback", _forget_events)

    def _committed(self, conn):
        kinds = conn.info.pop(EVENTS_KEY, None)
        if kinds:
            for listener in self.on_events:
                listener(kinds)

    @contextlib.contextmanager
    def read(self):
        with self.Session() as session:
            yield session

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
        # The two-key form for an item: ids are cut to 31 bits (a clash only makes two
        # items wait on each other).
        keys, args = (":k", {"k": LOCKS[name]}) if item is None else \
            (":k, :i", {"k": LOCKS[name], "i": item & 0x7FFF_FFFF})
        conn = self.engine.connect()
        got = False
        try:
            got = conn.scalar(text(f"SELECT pg_{'' if wait else 'try_'}advisory_lock({keys})"),
                              args) is not False
            conn.commit()
            yield got
        finally:
            if got:
                try:
                    conn.execute(text(f"SELECT pg_advisory_unlock({keys})"), args)
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
}


def lock_in(session, name, wait=True):
    """Hold `name` (LOCKS) until the caller's transaction ends; returns whether it holds it
    (wait=False: another process's transaction may). SQLite has one writer at a time, in
    one server process: nothing to take."""
    conn = session.connection() if isinstance(session, Session) else session
    if conn.dialect.name != "postgresql":
        return True
    return conn.scalar(text(f"SELECT pg_{'' if wait else 'try_'}advisory_xact_lock(:k)"),
                       {"k": LOCKS[name]}) is not False


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


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA case_sensitive_like=ON")   # LIKE as on PostgreSQL
    cur.close()


class among(ColumnElement):
    """`column IN (ids)`, ids a SELECT of one column that may return many rows. PostgreSQL
    gets `column = ANY(ARRAY(ids))`: the ids are computed once and the column's index looked
    up for each, whatever the statistics say; an IN, planned with statistics older than a
    cascade of 10,000 changes, was a nested loop of every changed row by every id (17 s)."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True       # a condition: SQLite gets no `= 1` after it
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement),
                           ("ids", InternalTraversal.dp_clauseelement)]

    def __init__(self, column, ids):
        self.column = column
        self.ids = ids


@compiles(among)
def _among(element, compiler, **kw):
    return compiler.process(element.column.in_(element.ids), **kw)


@compiles(among, "postgresql")
def _among_postgresql(element, compiler, **kw):
    return (f"{compiler.process(element.column, **kw)} = "
            f"ANY(ARRAY{compiler.process(element.ids.scalar_subquery(), **kw)})")


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


def event_row(kind, object_type, object_id, detail=None, at=None):
    """An event row for add_events: what changed (kind), on which object, with what detail."""
    return {"at": at or utcnow(), "kind": kind, "object_type": object_type,
            "object_id": object_id, "detail": detail or None}


def add_events(session, rows):
    """The one way event rows are written (event_row dicts, in order), in the session's own
    transaction: one statement for any number of them (by COPY on PostgreSQL past a few)."""
    if not rows:
        return
    conn = session.connection()
    _note_events(conn, (row["kind"] for row in rows))
    insert_rows(conn, Event.__table__, rows)


def record(session, kind, obj, **detail):
    """Add the event of one object's state change to the change's own transaction."""
    add_events(session, [event_row(kind, type(obj).__tablename__, obj.id, detail)])


# Up to this many rows go by one INSERT on PostgreSQL too: a COPY is three round trips (the
# statement, the data, its end) and a report's one or two rows cost less as an INSERT.
FEW_ROWS = 16


def insert_rows(conn, table, rows):
    """Insert many rows (dicts with the same keys) into a Core table, in order, on the
    caller's connection and transaction. PostgreSQL takes them by COPY: an executemany of
    INSERTs costs tens of microseconds of driver Python per row, which for the events of
    every execution was more than the rest of applying a report. SQLite takes an
    executemany. Defaults (ids from the sequence) apply to the columns left out."""
    if not rows:
        return
    if conn.dialect.name != "postgresql" or len(rows) <= FEW_ROWS:
        conn.execute(insert(table), rows)
        return
    names = list(rows[0])
    # COPY knows only the database's defaults: the Python ones (created_at=utcnow...) are
    # computed here, once for all the rows, as an INSERT would for each.
    defaults = {}
    for c in table.c:
        if c.name in rows[0] or c.default is None:
            continue
        if c.default.is_callable:
            defaults[c.name] = c.default.arg(None)
        elif c.default.is_scalar:
            defaults[c.name] = c.default.arg
    columns = names + list(defaults)
    json_at = [i for i, n in enumerate(columns) if isinstance(table.c[n].type, JSON)]
    fixed = list(defaults.values())
    # A value many rows share (the one detail of a cascade's events) is encoded once: the
    # rows hold every value, so its id() stands for it till the end.
    dumped = {}
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            values = [row[n] for n in names] + fixed
            for i in json_at:
                value = values[i]
                if value is not None:
                    text_ = dumped.get(id(value))
                    if text_ is None:
                        text_ = dumped[id(value)] = json.dumps(value)
                    values[i] = text_
            copy.write_row(values)


def next_ids(conn, table, n):
    """n new ids of a PostgreSQL table's serial id, ascending: rows can then go by COPY
    (insert_rows) and still be known by id, instead of an INSERT ... RETURNING of many
    rows, which is a new statement text (parsed by the driver placeholder by placeholder)
    for each number of rows."""
    return sorted(conn.execute(text(f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) "
                                    "FROM generate_series(1, :n)"), {"n": n}).scalars())


def insert_with_ids(conn, table, rows):
    """Insert rows (dicts with the same keys) and return their new ids, in order. On
    PostgreSQL the ids are drawn from the sequence first and the rows go by COPY
    (insert_rows); elsewhere by an INSERT ... RETURNING."""
    if conn.dialect.name != "postgresql" or len(rows) <= FEW_ROWS:
        return list(conn.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True),
                                 rows).scalars())
    ids = next_ids(conn, table, len(rows))
    insert_rows(conn, table, [{**row, "id": i} for row, i in zip(rows, ids)])
    return ids
