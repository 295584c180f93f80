"""Fault tests (issue 8, acceptance 2), on PostgreSQL: a 500-task batch survives kill -9 of a
worker, kill -9 of the server and a restart, a PostgreSQL restart, and the server's output
disk full for a while. In every case all 500 end succeeded, none ran twice at the same time,
none was lost, and the history (executions, events) is kept.

Each task holds an flock on a file of its own while it runs and notes when it finds it
taken: that catches two real processes of one task at once, whatever the database says.
Select them with `-k faults`; run with `-s` to see how long each fault stalled the batch.
"""
import errno
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime

import psutil
import pytest
from sqlalchemy import create_engine, text

import pgcluster
from hosts import real_part_missing
from procs import wait_until
from scitq.client import Client
from scitq.server.db import normalize_url

N = 500                 # tasks in the batch
FAULT_AT = 150          # succeeded tasks when the fault strikes
LEASE = 5               # seconds a worker may stay silent
BATCH = "faults"
FINISH_TIMEOUT = 150    # seconds for the whole batch, fault included
FINAL = ("succeeded", "failed", "lost", "released")


# --- fixtures ------------------------------------------------------------------

@pytest.fixture
def own_pg():
    """A PostgreSQL cluster of this test alone, that it may stop and start."""
    base = tempfile.mkdtemp(prefix="scitq-faults-pg-")
    os.chmod(base, 0o755)           # the postgres user must reach its data dir
    try:
        cluster = pgcluster.start(os.path.join(base, "data"))
    except (pgcluster.PgClusterError, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        real_part_missing(f"PostgreSQL unavailable: {exc}")
    try:
        # pgcluster's synchronous_commit=off acknowledges commits an immediate stop then
        # forgets: a crash test wants PostgreSQL's own default (fsync=off is harmless here:
        # the machine does not crash, only the postmaster).
        pg_stop(cluster, "fast")
        pg_start(cluster)
        yield cluster
    finally:
        try:
            cluster.stop()
        except pgcluster.PgClusterError:
            _kill_postmaster(cluster.data_dir)
        shutil.rmtree(base, ignore_errors=True)


def pg_ctl(cluster, *args):
    pgcluster._run([os.path.join(cluster.bin_dir, "pg_ctl"), "-D", cluster.data_dir, *args])


def pg_stop(cluster, mode):
    pg_ctl(cluster, "-m", mode, "-w", "stop")


def pg_start(cluster):
    opts = (f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {cluster.data_dir} "
            "-c fsync=off -c full_page_writes=off -c max_connections=300")
    pg_ctl(cluster, "-w", "-l", os.path.join(cluster.data_dir, "log"), "-o", opts, "start")


def _kill_postmaster(data_dir):
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            os.kill(int(f.readline()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted where the server keeps outputs (DATA_DIR/outputs), unmounted
    at the end whatever happens (requested before `procs`: the server is gone by then)."""
    if os.geteuid() != 0:
        real_part_missing("mounting a tmpfs needs root")
    where = tmp_path / "data" / "outputs"
    where.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode:
        real_part_missing(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


# --- the batch, its progress, and what must hold at the end --------------------

class Progress(threading.Thread):
    """Samples the batch's succeeded count (the server may be down: then nothing is noted)."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.samples = []           # (monotonic time, succeeded)
        self.done = threading.Event()

    def run(self):
        with Client(self.url, timeout=5) as client:
            while not self.done.is_set():
                try:
                    n = client.batch(BATCH)["counts"]["succeeded"]
                    self.samples.append((time.monotonic(), n))
                except Exception:   # noqa: BLE001 - the server or its database is down
                    pass
                self.done.wait(0.2)

    @property
    def succeeded(self):
        return self.samples[-1][1] if self.samples else 0

    def stop(self):
        self.done.set()
        self.join(10)

    def longest_stall(self):
        """Longest time without a new success, from the first success to the last."""
        rises = [t for (t, n), (_, before) in zip(self.samples[1:], self.samples) if n > before]
        return max((b - a for a, b in zip(rises, rises[1:])), default=0.0)


class Run:
    """A server on a fixed port over `db_url`, its workers and the 500-task batch."""

    def __init__(self, procs, db_url, tmp_path):
        self.procs = procs
        self.db_url = db_url
        self.tmp = tmp_path
        self.port = pgcluster.free_port()
        self.locks = tmp_path / "locks"
        self.locks.mkdir()
        self.doubles = tmp_path / "doubles"
        self.servers = 0
        self.server = self.start_server()
        self.url = self.server.url
        self.client = Client(self.url, timeout=30)
        self.workers = {}
        self.progress = None
        self.ids = []
        self.t0 = None

    def start_server(self):
        log = self.tmp / "server.log"
        if log.exists():                # keep what the previous one said
            log.rename(self.tmp / f"server-{self.servers}.log")
        self.servers += 1
        return self.procs.server(self.db_url, "--lease", str(LEASE), "--port", str(self.port))

    def start_worker(self, name):
        self.workers[name] = self.procs.worker(self.url, name, 4)
        return self.workers[name]

    def submit(self):
        command = (f"exec 9>>{self.locks}/$SCITQ_TASK_ID; flock -n 9 || "
                   f"echo $SCITQ_EXECUTION_ID >> {self.doubles}; sleep 0.05; echo $SCITQ_TASK_ID")
        self.t0 = time.monotonic()
        self.ids = self.client.add_tasks([{"command": command, "name": f"t{i}"} for i in range(N)],
                                         batch=BATCH)
        assert len(self.ids) == N
        self.progress = Progress(self.url)
        self.progress.start()

    def wait_for_fault_point(self):
        wait_until(lambda: self.progress.succeeded >= FAULT_AT, 60, 0.05,
                   f"{FAULT_AT} tasks to succeed")
        return self.progress.succeeded

    def finish(self):
        try:
            self.client.wait_batch(BATCH, interval=0.5, timeout=FINISH_TIMEOUT)
        finally:
            self.progress.stop()
        self.elapsed = time.monotonic() - self.t0

    def log(self, name):
        return (self.tmp / name).read_text(errors="replace")

    def close(self):
        if self.progress is not None and self.progress.is_alive():
            self.progress.stop()
        self.client.close()
        for proc in self.workers.values():
            self.procs.stop(proc, timeout=10)
        self.procs.stop(self.server, timeout=10)

    def executions(self):
        out, after = [], None
        while True:
            page = self.client.executions(after=after, limit=1000)
            out += page["items"]
            after = page["next"]
            if after is None:
                return out

    def events(self):
        engine = create_engine(normalize_url(self.db_url))
        try:
            with engine.connect() as conn:
                return conn.execute(text("SELECT object_type, object_id, kind FROM event")).all()
        finally:
            engine.dispose()

    def check(self, fault):
        """Every task succeeded once, with exactly its line; no two live executions of a task
        overlap; no two of its processes ran at once; every attempt has its rows and events."""
        summary = self.client.batch(BATCH)
        assert summary["counts"]["succeeded"] == N, summary["counts"]
        assert summary["counts"]["remaining"] == 0

        by_task = defaultdict(list)
        executions = self.executions()
        for ex in executions:
            by_task[ex["task_id"]].append(ex)
        assert set(by_task) == set(self.ids)
        for tid in self.ids:
            exs = sorted(by_task[tid], key=lambda e: (e["assigned_at"], e["id"]))
            assert all(e["status"] in FINAL and e["ended_at"] for e in exs), exs
            won = [e for e in exs if e["status"] == "succeeded"]
            assert len(won) == 1, exs
            assert [e["status"] for e in exs if e["status"] != "lost"] == ["succeeded"], exs
            for before, after in zip(exs, exs[1:]):
                assert at(after["assigned_at"]) >= at(before["ended_at"]), (
                    f"task {tid}: executions {before['id']} and {after['id']} were live at once", exs)
            data, size, complete = self.client.output(tid, execution_id=won[0]["id"])
            assert (data, size, complete) == (f"{tid}\n".encode(), len(f"{tid}\n"), True), won
            assert (won[0]["stdout_bytes"], won[0]["stderr_bytes"]) == (len(f"{tid}\n"), 0), won
        assert not self.doubles.exists(), f"ran twice at once: executions {self.doubles.read_text()}"

        kinds = defaultdict(set)
        for object_type, object_id, kind in self.events():
            if object_type == "execution":
                kinds[object_id].add(kind)
        for ex in executions:
            assert "execution.assigned" in kinds[ex["id"]], ex
            assert f"execution.{ex['status']}" in kinds[ex["id"]], (ex, kinds[ex["id"]])
            if ex["status"] == "succeeded":
                assert "execution.running" in kinds[ex["id"]], ex

        lost = [e for e in executions if e["status"] == "lost"]
        print(f"\n[{fault}] {N} tasks in {self.elapsed:.1f}s; longest stall "
              f"{self.progress.longest_stall():.1f}s; {len(executions)} executions, "
              f"{len(lost)} lost ({sorted({e['worker'] for e in lost})})")
        return executions


def at(value):
    return datetime.fromisoformat(value)


@pytest.fixture
def run_on(procs, tmp_path):
    """run_on(db_url): a Run, closed at the end (its processes end with `procs`)."""
    if not shutil.which("flock"):
        real_part_missing("flock (util-linux) is needed to catch two runs of a task at once")
    runs = []

    def make(db_url):
        runs.append(Run(procs, db_url, tmp_path))
        return runs[-1]

    yield make
    for r in runs:      # workers first, while their server listens: they drain at once
        r.close()


# --- the faults ------------------------------------------------------------------

def test_faults_kill_9_of_a_worker(pg_db, run_on):
    run = run_on(pg_db)
    doomed = run.start_worker("doomed")
    run.start_worker("steady")
    run.submit()
    run.wait_for_fault_point()

    os.kill(doomed.pid, signal.SIGSTOP)             # it forks nothing more while we look
    orphans = psutil.Process(doomed.pid).children()
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    for child in orphans:                           # each task leads a process group
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = time.monotonic()
    time.sleep(1)
    run.start_worker("rescuer")
    run.finish()

    executions = run.check("kill -9 of a worker")
    lost = [e for e in executions if e["status"] == "lost"]
    assert lost and {e["worker"] for e in lost} == {"doomed"}
    assert {e["reason"] for e in lost} == {"lost"}
    assert run.client.worker("doomed")["status"] == "lost"
    assert {e["worker"] for e in executions if e["status"] == "succeeded"} == {
        "doomed", "steady", "rescuer"}
    for ex in lost:     # given back after the lease (+ one sweep), not before
        assert (at(ex["ended_at"]) - at(ex["assigned_at"])).total_seconds() >= LEASE - 1
    print(f"[kill -9 of a worker] {len(lost)} execution(s) of the killed worker given back; "
          f"batch done {time.monotonic() - killed_at:.1f}s after the kill")


def test_faults_kill_9_of_the_server_and_a_restart(pg_db, run_on):
    run = run_on(pg_db)
    for name in ("w1", "w2", "w3"):
        run.start_worker(name)
    run.submit()
    before = run.wait_for_fault_point()

    os.kill(run.server.pid, signal.SIGKILL)
    run.server.wait()
    killed_at = time.monotonic()
    time.sleep(4)      # with the restart, longer than the lease since the workers were last heard
    run.server = run.start_server()
    up_at = time.monotonic()
    wait_until(lambda: run.progress.succeeded > before + 20, 60, 0.05, "progress after the restart")
    resumed_at = time.monotonic()
    run.finish()

    executions = run.check("kill -9 of the server")
    # The workers went on through the restart: none was taken for lost, nothing was redone.
    assert [e for e in executions if e["status"] == "lost"] == []
    assert len(executions) == N
    assert all(run.client.worker(w)["status"] == "running" for w in ("w1", "w2", "w3"))
    assert "unexpected error" not in run.log("server.log")
    print(f"[kill -9 of the server] down {up_at - killed_at:.1f}s (restart included); "
          f"20 more successes {resumed_at - up_at:.1f}s after it listened again")


def test_faults_a_postgresql_restart(own_pg, run_on):
    cluster = own_pg
    name = f"scitq_faults_{uuid.uuid4().hex[:12]}"
    run = run_on(cluster.create_database(name))
    for w in ("w1", "w2", "w3"):
        run.start_worker(w)
    run.submit()
    before = run.wait_for_fault_point()

    pg_stop(cluster, "immediate")                   # a crash: no checkpoint, recovery at start
    stopped_at = time.monotonic()
    time.sleep(5)
    pg_start(cluster)
    up_at = time.monotonic()
    wait_until(lambda: run.progress.succeeded > before + 20, 60, 0.05, "progress after the restart")
    resumed_at = time.monotonic()
    run.finish()

    executions = run.check("PostgreSQL restart")
    assert [e for e in executions if e["status"] == "lost"] == []
    assert len(executions) == N
    assert all(run.client.worker(w)["status"] == "running" for w in ("w1", "w2", "w3"))
    print(f"[PostgreSQL restart] down {up_at - stopped_at:.1f}s; 20 more successes "
          f"{resumed_at - up_at:.1f}s after it was back")


def test_faults_the_output_disk_full_for_a_while(small_disk, pg_db, run_on):
    run = run_on(pg_db)
    for w in ("w1", "w2", "w3"):
        run.start_worker(w)
    run.submit()
    run.wait_for_fault_point()

    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        block = b"\0" * (1 << 16)
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, block)
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    full_at = time.monotonic()
    wait_until(lambda: "HTTP 507" in "".join(run.log(f"worker-{w}.log") for w in run.workers),
               30, 0.1, "a worker to be told 507")
    stalled = run.progress.succeeded
    # What the workers held then, at most, gets through: their slots and their queues (sized
    # by the workers: tasks of 50 ms get a queue), whose small outputs may still fit.
    held = sum(w["concurrency"] + w["depth"] for w in run.client.workers())
    time.sleep(5)
    assert run.progress.succeeded <= stalled + held
    filler.unlink()
    freed_at = time.monotonic()
    wait_until(lambda: run.progress.succeeded > stalled + 20, 60, 0.05, "progress once freed")
    resumed_at = time.monotonic()
    run.finish()

    executions = run.check("output disk full")
    assert [e for e in executions if e["status"] == "lost"] == []
    assert len(executions) == N
    log = run.log("server.log")
    assert "unexpected error" not in log and "Traceback" not in log
    print(f"[output disk full] full for {freed_at - full_at:.1f}s; 20 more successes "
          f"{resumed_at - freed_at:.1f}s after it was freed")
