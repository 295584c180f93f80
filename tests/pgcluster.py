"""Start and stop a throwaway PostgreSQL cluster on loopback (stdlib only)."""
import argparse
import contextlib
import glob
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PG_USER = "postgres"


class PgClusterError(RuntimeError):
    """PostgreSQL could not be found, started or stopped."""


def find_bin_dir():
    """Return the bin directory of the highest installed PostgreSQL version."""
    dirs = [os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not dirs:
        raise PgClusterError("no PostgreSQL binaries found under /usr/lib/postgresql/*/bin "
                             "(install the 'postgresql' package)")

    def version(d):
        return tuple(int(x) if x.isdigit() else 0 for x in d.split("/")[-2].split("."))

    return max(dirs, key=version)


def free_port():
    """Return a TCP port that is currently free on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd):
    """Run cmd (as the postgres user when we are root); raise PgClusterError on failure."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", PG_USER, "--", *cmd]
    res = subprocess.run(cmd, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    if res.returncode:
        raise PgClusterError(f"{shlex.join(cmd)} failed ({res.returncode}):\n{res.stdout}")
    return res.stdout


class Server:
    """A reachable PostgreSQL server, given by an SQLAlchemy URL."""

    def __init__(self, url):
        self.url = url

    def _db_url(self, name):
        return urlunsplit(urlsplit(self.url)._replace(path="/" + name))

    def _execute(self, template, name):
        import psycopg
        from psycopg import sql
        dsn = self.url.replace("+psycopg", "", 1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL(template).format(sql.Identifier(name)))

    def create_database(self, name):
        """Create database `name` and return its SQLAlchemy URL."""
        self._execute("CREATE DATABASE {}", name)
        return self._db_url(name)

    def drop_database(self, name):
        """Drop database `name`, disconnecting any remaining sessions."""
        self._execute("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


class Cluster(Server):
    """A throwaway cluster living in data_dir."""

    def __init__(self, data_dir, port=None, bin_dir=None):
        self.data_dir = os.path.abspath(data_dir)
        self.port = port
        self.bin_dir = bin_dir
        super().__init__(f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/postgres")

    def stop(self):
        """Stop the server (if running) and remove its directory."""
        if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            pg_ctl = os.path.join(self.bin_dir or find_bin_dir(), "pg_ctl")
            _run([pg_ctl, "-D", self.data_dir, "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start(base_dir, port=None):
    """Initialise and start a cluster in base_dir (must be absent or empty)."""
    bin_dir = find_bin_dir()
    data_dir = os.path.abspath(base_dir)
    os.makedirs(data_dir, mode=0o755, exist_ok=True)
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            raise PgClusterError("running as root requires 'runuser' to drop to the postgres user")
        shutil.chown(data_dir, PG_USER, PG_USER)
        try:
            _run(["test", "-w", data_dir])
        except PgClusterError:
            raise PgClusterError(f"user {PG_USER!r} cannot reach {data_dir}; "
                                 "its parent directories must be mode 0755") from None
    _run([os.path.join(bin_dir, "initdb"), "-D", data_dir, "-U", PG_USER, "-A", "trust",
          "--no-sync", "-E", "UTF8", "--locale=C"])
    cluster = Cluster(data_dir, port or free_port(), bin_dir)
    opts = (f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {shlex.quote(data_dir)} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
    try:
        _run([os.path.join(bin_dir, "pg_ctl"), "-D", data_dir, "-w",
              "-l", os.path.join(data_dir, "log"), "-o", opts, "start"])
    except PgClusterError as exc:
        try:
            with open(os.path.join(data_dir, "log")) as f:
                exc.args = (f"{exc}\nserver log:\n{f.read()[-3000:]}",)
        except OSError:
            pass
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def throwaway():
    """(a temporary directory, a cluster started in it), both gone at the end: what a bench
    that compares SQLite and PostgreSQL in one process needs."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)        # the postgres user reaches its data directory through it
        cluster = start(tmp / "pg")
        try:
            yield tmp, cluster
        finally:
            cluster.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("dir", help="cluster directory (created by start, removed by stop)")
    parser.add_argument("--port", type=int, help="TCP port (default: a free one)")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            print(start(args.dir, args.port).url, flush=True)
        else:
            Cluster(args.dir).stop()
    except PgClusterError as exc:
        sys.exit(f"pgcluster: {exc}")


if __name__ == "__main__":
    main()
