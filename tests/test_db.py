"""The schema: migrations build exactly the models, and applying them again changes nothing."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from scitq.errors import BadRequest
from scitq.server.db import MIGRATIONS, Database, normalize_url
from scitq.server.models import Base


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


def test_postgresql_urls_as_people_type_them():
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(BadRequest):
        normalize_url("mysql://u@h/db")
    with pytest.raises(BadRequest):
        normalize_url("not a url")
