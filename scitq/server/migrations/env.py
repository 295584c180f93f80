"""Alembic environment: scitq passes its own connection (see Database.migrate)."""
from alembic import context

from scitq.server.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("scitq migrations run through scitq.server.db.Database.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
