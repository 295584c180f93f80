"""Shared pytest fixtures for the scitq test suite."""
import os
import shutil
import socket
import sys
import tempfile
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgcluster  # noqa: E402
from hosts import real_part_missing  # noqa: E402


# --- Hermetic: never the user's HOME, data dir, config file or server ----------

XDG = {"XDG_CONFIG_HOME": ".config", "XDG_DATA_HOME": ".local/share", "XDG_CACHE_HOME": ".cache",
       "XDG_STATE_HOME": ".local/state"}


def pytest_configure(config):
    """For the whole session (and every process it starts): a HOME and XDG dirs of its own,
    and no SCITQ_* setting but the tests' own (SCITQ_TEST_*), so that neither the user's
    token, data dir and config file, nor a `scitq up` on port 5000, can reach a test."""
    home = tempfile.mkdtemp(prefix="scitq-test-home-")
    config._scitq_saved_env = dict(os.environ)
    config._scitq_home = home
    for name in [n for n in os.environ if n.startswith("SCITQ_") and not n.startswith("SCITQ_TEST_")]:
        del os.environ[name]
    os.environ["HOME"] = home
    for name, sub in XDG.items():
        os.environ[name] = os.path.join(home, sub)
    # A command a test runs without --server goes to a port held closed for the session:
    # refused at once, never the machine's own scitq on 5000.
    config._scitq_nowhere = socket.socket()
    config._scitq_nowhere.bind(("127.0.0.1", 0))
    os.environ["SCITQ_SERVER"] = f"http://127.0.0.1:{config._scitq_nowhere.getsockname()[1]}"


def pytest_unconfigure(config):
    saved = getattr(config, "_scitq_saved_env", None)
    if saved is None:
        return
    os.environ.clear()
    os.environ.update(saved)
    config._scitq_nowhere.close()
    shutil.rmtree(config._scitq_home, ignore_errors=True)


# --- Databases ---------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_cluster():
    """The server from $SCITQ_TEST_PG, else a throwaway cluster for the session."""
    if os.environ.get("SCITQ_TEST_PG"):
        yield pgcluster.Server(os.environ["SCITQ_TEST_PG"])
        return
    base = tempfile.mkdtemp(prefix="scitq-pg-")
    os.chmod(base, 0o755)  # the postgres user must be able to traverse it
    try:
        cluster = pgcluster.start(os.path.join(base, "data"))
    except (pgcluster.PgClusterError, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        real_part_missing(f"PostgreSQL unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """SQLAlchemy URL of an empty database, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/scitq.db"
        return
    yield request.getfixturevalue("pg_db")


@pytest.fixture
def sims(db_url, tmp_path):
    """make(clouds, **reconciler settings) -> a recruitment Sim (tests/recruitsim.py) on the
    test's database; each is closed at the end."""
    from recruitsim import Sim
    made = []

    def make(clouds, **settings):
        sim = Sim(db_url, tmp_path, clouds, **settings)
        made.append(sim)
        return sim
    yield make
    for sim in made:
        sim.close()


@pytest.fixture
def pg_db(pg_cluster):
    """An empty database on the session's PostgreSQL, dropped afterwards (a test that starts
    processes on it requests it before `procs`, so that they end before it is dropped)."""
    name = f"scitq_test_{uuid.uuid4().hex[:16]}"
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        pg_cluster.drop_database(name)


# --- The app in-process, through Flask's test client --------------------------

@pytest.fixture
def app(request, db_url, tmp_path):
    """The server app on each database; a test module may set LEASE (seconds).
    The dispatcher thread is not started: tests call dispatch() where they want it."""
    from scitq.server import create_app
    config = {"DATA_DIR": tmp_path, "DATABASE": db_url}
    if getattr(request.module, "LEASE", None) is not None:
        config["LEASE"] = request.module.LEASE
    app = create_app(config)
    yield app
    app.extensions["scitq"].db.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


# --- Processes: real servers and workers on loopback -------------------------

from procs import Procs  # noqa: E402
from scitq.client import Client  # noqa: E402


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 on loopback for the whole session (tests use buckets of their own)."""
    from s3server import S3Server
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def live(db_url, procs):
    """A real `scitq server` on loopback over each database, with a client to it.
    (db_url comes first so that the processes end before their database is dropped.)"""
    server = procs.server(db_url)
    with Client(server.url) as client:
        client.url = server.url
        yield client
from dockerd import dockerd  # noqa: E402,F401
