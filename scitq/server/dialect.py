"""Every statement whose text differs between SQLite and PostgreSQL, and the bulk insert that
takes PostgreSQL's COPY: the rest of the server writes portable SQLAlchemy and calls these.

Each function takes the connection (or session) it runs on; the SQLite side is what a single
server process with one writer at a time needs, the PostgreSQL side what several server
processes and large tables need. Migrations keep their own (they are history).
"""
import collections
import itertools

from sqlalchemy import insert, text
from sqlalchemy.dialects import postgresql as pg_dialect, sqlite as sqlite_dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnElement, FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean


def _conn(conn):
    return conn.connection() if isinstance(conn, Session) else conn


def is_postgresql(conn):
    return _conn(conn).dialect.name == "postgresql"


# --- Connections ----------------------------------------------------------------------

def sqlite_pragmas(dbapi_conn, _record):
    """Each new SQLite connection: WAL (readers never wait for the writer), foreign keys on
    (SQLite leaves them off), a wait for the file's lock, and LIKE case-sensitive as on
    PostgreSQL."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA case_sensitive_like=ON")
    cur.close()


# --- Locks of the passes that run in one server process at a time -----------------------
# SQLite is opened by one server process: its Database holds process locks instead, and a
# transaction lock is nothing to take (its writers already go one at a time).

def _lock_keys(key, item):
    """The advisory lock's arguments: the two-key form for an item, its id cut to 31 bits (a
    clash only makes two items wait on each other)."""
    if item is None:
        return ":k", {"k": key}
    return ":k, :i", {"k": key, "i": item & 0x7FFF_FFFF}


def lock_session(conn, key, item=None, wait=True):
    """PostgreSQL: take the session advisory lock `key` (and `item`) on this connection, held
    across its transactions until unlock_session or the connection's end (a dead process's
    locks are freed). Returns whether it holds it."""
    keys, args = _lock_keys(key, item)
    return conn.scalar(text(f"SELECT pg_{'' if wait else 'try_'}advisory_lock({keys})"),
                       args) is not False


def unlock_session(conn, key, item=None):
    keys, args = _lock_keys(key, item)
    conn.execute(text(f"SELECT pg_advisory_unlock({keys})"), args)


def lock_transaction(conn, key, wait=True):
    """Hold the lock `key` until the transaction of `conn` (a connection or session) ends;
    returns whether it holds it (wait=False: another process's transaction may). SQLite:
    always held, its one writer at a time being the lock."""
    conn = _conn(conn)
    if not is_postgresql(conn):
        return True
    return conn.scalar(text(f"SELECT pg_{'' if wait else 'try_'}advisory_xact_lock(:k)"),
                       {"k": key}) is not False


# --- Expressions --------------------------------------------------------------------------

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


class truncate_to_minute(FunctionElement):
    """A timestamp cut to its minute: PostgreSQL's date_trunc gives a timestamp, SQLite (which
    has none) strftime gives its text (read back by rollups.aware)."""

    inherit_cache = True
    name = "truncate_to_minute"


@compiles(truncate_to_minute)
def _minute(element, compiler, **kw):
    return f"strftime('%Y-%m-%d %H:%M:00', {compiler.process(element.clauses, **kw)})"


@compiles(truncate_to_minute, "postgresql")
def _minute_postgresql(element, compiler, **kw):
    return f"date_trunc('minute', {compiler.process(element.clauses, **kw)})"


# --- Statements -----------------------------------------------------------------------------

def upsert(conn, table, keys, columns):
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET these columns: both databases say it the
    same way, but SQLAlchemy builds it only from each dialect's own insert()."""
    dialect = pg_dialect if is_postgresql(conn) else sqlite_dialect
    stmt = dialect.insert(table)
    return stmt.on_conflict_do_update(index_elements=list(keys),
                                      set_={c: stmt.excluded[c] for c in columns})


def fold_counts(conn, table):
    """Fold a table of (batch_id, status, n) deltas into one row per key, dropping those at
    zero. PostgreSQL: one statement deletes and reinserts the sums, so rows concurrent
    writers add meanwhile are not deleted. SQLite has one row per key already (its triggers
    upsert, having one writer at a time): deleting those at zero is all."""
    conn = _conn(conn)
    if not is_postgresql(conn):
        conn.execute(table.delete().where(table.c.n == 0))
        return
    conn.execute(text(f"WITH gone AS (DELETE FROM {table.name} RETURNING batch_id, status, n) "
                      f"INSERT INTO {table.name} (batch_id, status, n) SELECT batch_id, status, sum(n) "
                      "FROM gone GROUP BY batch_id, status HAVING sum(n) <> 0"))


def analyze(conn, table, lock_timeout):
    """PostgreSQL: bring the table's planner statistics up to date now, waiting at most
    `lock_timeout` for autovacuum (which holds it meanwhile), and return its estimated row
    count. SQLite plans without them: None."""
    conn = _conn(conn)
    if not is_postgresql(conn):
        return None
    conn.execute(text(f"SET LOCAL lock_timeout = '{lock_timeout}'"))
    conn.execute(text(f"ANALYZE {table.name}"))
    return conn.scalar(text(f"SELECT reltuples FROM pg_class WHERE oid = '{table.name}'::regclass"))


# --- Bulk inserts ---------------------------------------------------------------------------

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
    if not is_postgresql(conn) or len(rows) <= FEW_ROWS:
        conn.execute(insert(table), rows)
        return
    _copy(conn, table, rows)


def _copy(conn, table, rows):
    """The rows by COPY, each value through its column type's bind processor as an INSERT
    would (JSON encoded, a TypeDecorator's process_bind_param)."""
    names = list(rows[0])
    defaults = _python_defaults(table, names)
    columns = names + list(defaults)
    processors = _processors(conn.dialect, table)
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        by_column = [_converted(processors[n], [row[n] for row in rows], cursor) if n in processors
                     else [row[n] for row in rows] for n in names]
        by_column += [itertools.repeat(_rendered(processors[n](v), cursor) if n in processors else v)
                      for n, v in defaults.items()]
        for values in zip(*by_column):
            copy.write_row(values)


def _python_defaults(table, given):
    """{column: value} of the Python defaults (created_at=utcnow...) of the columns not
    given, computed once for all the rows as an INSERT would for each: COPY knows only the
    database's defaults."""
    defaults = {}
    for c in table.c:
        if c.name in given or c.default is None:
            continue
        if c.default.is_callable:
            defaults[c.name] = c.default.arg(None)
        elif c.default.is_scalar:
            defaults[c.name] = c.default.arg
    return defaults


def _converted(process, values, cursor):
    """The values through `process`. A value several rows share (the one detail of a
    cascade's events) is converted once, and rendered once to the text COPY sends for it
    (psycopg would encode a JSON value again for each row): the rows hold every value, so
    its id() stands for it till the end."""
    counts = collections.Counter(map(id, values))
    if len(counts) == len(values):
        return list(map(process, values))
    done = {}
    for value in values:
        key = id(value)
        if key not in done:
            out = process(value)
            done[key] = _rendered(out, cursor) if counts[key] > 1 else out
    return [done[id(v)] for v in values]


def _rendered(value, cursor):
    """The text psycopg's own dumper gives for the value (None stays NULL)."""
    from psycopg.adapt import PyFormat     # psycopg is installed with PostgreSQL only

    if value is None:
        return None
    dumper = cursor.adapters.get_dumper(type(value), PyFormat.TEXT)(type(value), cursor)
    return bytes(dumper.dump(value)).decode()


def _processors(dialect, table):
    """{column name: its type's bind processor} for this dialect, of the columns that have
    one; cached on the table by dialect name (every engine of a process is made alike)."""
    cache = table.info.setdefault("scitq.bind_processors", {})
    found = cache.get(dialect.name)
    if found is None:
        found = cache[dialect.name] = {}
        for c in table.c:
            process = c.type._cached_bind_processor(dialect)
            if process is not None:
                found[c.name] = process
    return found


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
    if not is_postgresql(conn) or len(rows) <= FEW_ROWS:
        return list(conn.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True),
                                 rows).scalars())
    ids = next_ids(conn, table, len(rows))
    insert_rows(conn, table, [{**row, "id": i} for row, i in zip(rows, ids)])
    return ids
