"""scitq.server.dialect: what differs between SQLite and PostgreSQL gives the same outcome on both."""
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import JSON, Column, MetaData, String, Table, TypeDecorator, select, text

from scitq.server.db import Database
from scitq.server.dialect import FEW_ROWS, insert_rows
from scitq.server.models import Id, UTCDateTime


class Tags(TypeDecorator):
    """A list of words stored as one comma-separated text: only its process_bind_param makes
    the text a column of type String can take."""

    impl = String(200)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else ",".join(value)

    def process_result_value(self, value, dialect):
        return None if value is None else value.split(",")


PROBE = Table("dialect_probe", MetaData(),
              Column("id", Id, primary_key=True),
              Column("path", String(8)),
              Column("detail", JSON),
              Column("at", UTCDateTime),
              Column("tags", Tags))


def test_insert_rows_converts_each_value_by_its_column_type_by_copy_as_by_insert(db_url):
    """The same rows written by COPY (more than FEW_ROWS on PostgreSQL) and by INSERT (FEW_ROWS
    at a time) read back the same, at the SQL level too: JSON (None as JSON null, a detail many
    rows share), naive and non-UTC datetimes of an aware UTC type (a TypeDecorator), and a
    TypeDecorator whose bound value is not the Python value. The PostgreSQL session is in a
    zone far from UTC, so a naive datetime not made UTC by its type would be read in it."""
    db = Database(db_url)
    try:
        PROBE.create(db.engine)
        shared = {"reason": "dependency failed", "n": [1, None]}
        base = datetime(2026, 3, 1, 12, 30, 15, 123456)
        plus5 = timezone(timedelta(hours=5))
        rows = [{"detail": shared if i % 3 else ({"i": i, "text": "tab\t\\N é"} if i % 2 else None),
                 "at": base + timedelta(minutes=i) if i % 2 else (base + timedelta(minutes=i)).replace(tzinfo=plus5),
                 "tags": ["a", f"t{i}"] if i % 4 else None}
                for i in range(FEW_ROWS + 8)]
        with db.write() as s:
            if not db.is_sqlite:
                s.execute(text("SET LOCAL TIME ZONE 'Pacific/Chatham'"))
            conn = s.connection()
            insert_rows(conn, PROBE, [{"path": "copy", **row} for row in rows])
            for k in range(0, len(rows), FEW_ROWS):
                insert_rows(conn, PROBE, [{"path": "insert", **row} for row in rows[k:k + FEW_ROWS]])
        with db.read() as s:
            read = {path: s.execute(select(PROBE.c.detail, PROBE.c.at, PROBE.c.tags,
                                           PROBE.c.detail.is_(None), PROBE.c.tags.is_(None))
                                    .where(PROBE.c.path == path).order_by(PROBE.c.id)).all()
                    for path in ("copy", "insert")}
        assert read["copy"] == read["insert"]
        assert [r.detail for r in read["copy"]] == [row["detail"] for row in rows]
        assert [r.tags for r in read["copy"]] == [row["tags"] for row in rows]
        assert [r.at for r in read["copy"]] == [
            row["at"] if row["at"].tzinfo else row["at"].replace(tzinfo=timezone.utc) for row in rows]
        assert all(r.at.utcoffset() == timedelta(0) for r in read["copy"])
    finally:
        PROBE.drop(db.engine, checkfirst=True)
        db.dispose()


# What only one database understands, or a test of which one runs: dialect.py's own words.
ONE_DATABASE = re.compile(r"dialect\.name|sqlalchemy\.dialects|func\.(date_trunc|strftime)|FROM STDIN"
                          r"|ANY\(ARRAY|text\(f?[\"'].*(PRAGMA|ANALYZE|\bpg_|::|RETURNING|ON CONFLICT)")


def test_sql_of_one_database_is_written_only_in_the_dialect_module():
    """A module of the server (migrations aside: they are history) that needs SQL written
    differently per database calls scitq.server.dialect, which holds every such text."""
    server = Path(__file__).resolve().parents[1] / "scitq" / "server"
    found = [f"{path.relative_to(server)}:{n}: {line.strip()}"
             for path in sorted(server.rglob("*.py"))
             if path.name != "dialect.py" and "migrations" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if ONE_DATABASE.search(line.split("#")[0])]
    assert found == []
