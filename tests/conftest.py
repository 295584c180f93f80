"""Shared pytest fixtures for the scitq test suite."""
import os
import shutil
import sys
import tempfile
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgcluster  # noqa: E402


# --- Databases ---------------------------------------------------------------

def _pg_unavailable(reason):
    """Fail in CI (PostgreSQL tests must run there), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


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
        _pg_unavailable(str(exc))
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
    server = request.getfixturevalue("pg_cluster")
    name = f"scitq_test_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


# --- Processes: real servers and workers on loopback -------------------------

import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from scitq.client import Client  # noqa: E402

URL_LINE = re.compile(r"(?:scitq server on|scitq is up:) (http://\S+)")


class Procs:
    """Starts `scitq` processes for a test and ends every one of them afterwards."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.started = []

    def spawn(self, args, log_name, env=None):
        log = open(self.tmp / log_name, "wb")
        proc = subprocess.Popen([sys.executable, "-m", "scitq.cli", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc.log_path = self.tmp / log_name
        self.started.append(proc)
        return proc

    def server(self, db_url, *args, command="server", env=None):
        """A server on a free port; returns (proc, url) once it answers."""
        proc = self.spawn([command, "--db", db_url, "--data-dir", str(self.tmp / "data"),
                           "--port", "0", *args], f"{command}.log", env=env)
        proc.url = wait_for_url(proc)
        return proc

    def worker(self, url, name, concurrency=1, *args):
        return self.spawn(["worker", url, "--name", name, "--concurrency", str(concurrency),
                           "--workdir", str(self.tmp / "work"), *args], f"worker-{name}.log")

    def stop(self, proc, sig=signal.SIGTERM, timeout=20):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def cleanup(self):
        for proc in reversed(self.started):
            self.stop(proc, timeout=10)
            try:   # whatever the process group still holds (tasks of a killed worker)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_for_url(proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = URL_LINE.search(proc.log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"server did not start:\n{proc.log_path.read_text(errors='replace')[-3000:]}")


def wait_until(predicate, timeout=60, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def live(db_url, procs):
    """A real `scitq server` on loopback over each database, with a client to it.
    (db_url comes first so that the processes end before their database is dropped.)"""
    server = procs.server(db_url)
    with Client(server.url) as client:
        client.url = server.url
        yield client
