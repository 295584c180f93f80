"""No-op task throughput: scitq on PostgreSQL against Celery 5 + Redis and the machine's limit.

    python bench/throughput.py [--tasks 10000] [--prefetch auto,16,128] [--only limit,celery,scitq]
                               [--profile DIR]

Each system runs the same work with the same total concurrency of 8: N shell tasks
`/bin/sh -c true`, each its own subprocess.

- scitq: a server on a throwaway PostgreSQL (tests/pgcluster.py) and 2 workers of
  concurrency 4 (real processes, tests/procs.py), run once per --prefetch (the tasks a
  worker holds besides those it runs): auto is the default (the worker sizes it), 16 is
  what a Celery worker of concurrency 4 reserves by default (prefetch multiplier 4), 128
  the deepest queue auto goes to. The N tasks go in with one bulk call;
  the time runs from that call to the last task succeeded. Afterwards the database is
  counted: every task, every execution and the events of each execution must be there
  (the full history is kept while going fast).
- celery: Debian's redis-server started here on a free loopback port (no persistence),
  2 `celery worker` processes with the prefork pool and concurrency 4; each task calls
  subprocess.run on the same command. A group of N is sent and its results awaited. It
  runs once per --prefetch too, reserving as many tasks (prefetch multiplier = prefetch /
  4; with auto, Celery's default of 4), and each scitq run is compared with the Celery run of
  its own prefetch: scitq's defaults against Celery's.
- limit: a bare Python loop, 8 threads each running subprocess.run: what this machine can
  do at all, with no queue in between.

Each system first runs a warm-up of a few hundred tasks that is not timed. The table gives
tasks/s, the CPU its own processes used (the task processes included) per task, and the
ratios scitq/celery and scitq/limit (goals with the defaults: >= 2 and >= 0.6; pinned: >= 1.5
and >= 0.5). On a machine whose cores
are shared by the tasks and the system that runs them, CPU per task is what decides the
rate, and it is steadier than the rate when something else runs on the machine.

--profile DIR records the scitq server and first worker during the timed part with
py-spy (`pip install py-spy`; --gil: only the thread that runs Python), as collapsed
stacks in DIR/profile-server.txt and DIR/profile-worker.txt.

This file is also the Celery app (`celery -A throughput worker`) when BENCH_REDIS_URL is set.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMAND = ["/bin/sh", "-c", "true"]
CONCURRENCY = 8          # in total, for every system
WORKERS = 2              # scitq workers, Celery worker processes


def make_celery(url):
    from celery import Celery
    app = Celery("throughput", broker=url, backend=url)
    app.conf.update(result_expires=600, worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True,
                    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_MULTIPLIER", 4)))

    @app.task(name="throughput.run")
    def run():
        return subprocess.run(COMMAND, stdin=subprocess.DEVNULL).returncode

    return app


if os.environ.get("BENCH_REDIS_URL"):      # imported by `celery -A throughput worker`
    app = make_celery(os.environ["BENCH_REDIS_URL"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids):
    """User + system CPU seconds of these processes, their live children, and the
    children they have waited for (psutil)."""
    import psutil
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p] + p.children(recursive=True)
        except psutil.Error:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
    return total


# --- the limit --------------------------------------------------------------

def run_limit(n):
    def loop(count):
        for _ in range(count):
            subprocess.run(COMMAND, stdin=subprocess.DEVNULL)

    def burst(total):
        threads = [threading.Thread(target=loop, args=(total // CONCURRENCY + (i < total % CONCURRENCY),))
                   for i in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    burst(200)
    cpu0 = time.process_time() + _children_cpu()
    t0 = time.perf_counter()
    burst(n)
    elapsed = time.perf_counter() - t0
    return elapsed, time.process_time() + _children_cpu() - cpu0, ""


def _children_cpu():
    t = os.times()
    return t.children_user + t.children_system


# --- Celery -------------------------------------------------------------------

def run_celery(n, tmp, prefetch):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    procs = []
    try:
        redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                                  "--save", "", "--appendonly", "no", "--dir", str(tmp),
                                  "--loglevel", "warning"],
                                 stdout=open(tmp / "redis.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(redis)
        env = dict(os.environ, BENCH_REDIS_URL=url,
                   BENCH_CELERY_MULTIPLIER=str(4 if prefetch == "auto" else
                                               max(1, prefetch // (CONCURRENCY // WORKERS))))
        for i in range(WORKERS):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "throughput", "worker", "--pool", "prefork",
                 "--concurrency", str(CONCURRENCY // WORKERS), "-n", f"w{i}@bench",
                 "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=HERE, env=env, stdout=open(tmp / f"celery{i}.log", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True))
        from celery import group
        celery = make_celery(url)
        run = celery.tasks["throughput.run"]
        deadline = time.monotonic() + 60
        while len(celery.control.ping(timeout=0.5) or []) < WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError("celery workers did not answer:\n" + (tmp / "celery0.log").read_text()[-2000:])
        group(run.s() for _ in range(200)).apply_async().get(timeout=120)     # warm-up
        workers = [p.pid for p in procs[1:]]
        cpu0 = cpu_seconds(workers) + cpu_seconds([redis.pid])
        t0 = time.perf_counter()
        results = group(run.s() for _ in range(n)).apply_async().get(timeout=3600)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(workers) + cpu_seconds([redis.pid]) - cpu0
        failed = sum(1 for r in results if r != 0)
        return elapsed, cpu, f"{len(results)} results, {failed} non-zero"
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --- scitq --------------------------------------------------------------------

def run_scitq(n, tmp, prefetch, profile=None):
    sys.path.insert(0, str(HERE.parent / "tests"))
    import pgcluster
    from procs import Procs, wait_until

    from scitq.client import Client

    cluster = pgcluster.start(tmp / "pg")
    procs = Procs(tmp)
    try:
        db_url = cluster.create_database("throughput")
        server = procs.server(db_url, "--log-level", "WARNING")
        workers = [procs.worker(server.url, f"w{i}", CONCURRENCY // WORKERS, "--prefetch", str(prefetch),
                                "--log-level", "WARNING") for i in range(WORKERS)]
        with Client(server.url) as c:
            wait_until(lambda: len(c.workers()) == WORKERS, 30, what="worker registration")
            c.add_tasks([{"command": "true"}] * 200, batch="warmup")
            c.wait_batch("warmup", interval=0.2, timeout=120)
            postmaster = int((Path(cluster.data_dir) / "postmaster.pid").read_text().split()[0])
            parts = {"server": [server.pid], "workers": [w.pid for w in workers],
                     "postgres": [postmaster]}
            cpu0 = {k: cpu_seconds(v) for k, v in parts.items()}
            profilers = _profile(profile, server, workers, tmp)
            t0 = time.time()
            c.add_tasks([{"command": "true"}] * n, batch="bench")
            # Looking every half second, as a user's page would: each look counts the batch
            # (4 ms of PostgreSQL at 20,000 tasks), which must not weigh on what is measured.
            # The end is the last task's end as the server recorded it, so the look's period
            # does not count in the time.
            while (counts := c.batch("bench")["counts"])["succeeded"] < n:
                if counts["failed"]:
                    raise RuntimeError(f"{counts['failed']} task(s) failed")
                time.sleep(0.5)
            cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in parts.items()}
            elapsed = last_end(db_url) - t0
            for p in profilers:
                p.wait()
        split = ", ".join(f"{k} {v / n * 1000:.2f}" for k, v in cpu.items())
        return elapsed, sum(cpu.values()), f"{history(db_url, n)}; CPU ms/task: {split}"
    finally:
        procs.cleanup()
        cluster.stop()


def _profile(directory, server, workers, tmp):
    """py-spy record on the server and the first worker for the timed part."""
    if not directory:
        return []
    out = []
    for name, pid in (("server", server.pid), ("worker", workers[0].pid)):
        out.append(subprocess.Popen(
            [_py_spy(), "record", "--pid", str(pid), "--duration", str(profile_seconds), "--rate", "200",
             "--gil", "--format", "raw", "-o", str(Path(directory).resolve() / f"profile-{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return out


profile_seconds = 10


def _py_spy():
    """py-spy from the venv running this script (pip install py-spy), else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


def last_end(db_url):
    """When the bench batch's last execution ended (server clock: the same machine's)."""
    import psycopg
    with psycopg.connect(db_url.replace("+psycopg", "", 1)) as conn:
        return conn.execute(
            "SELECT extract(epoch FROM max(e.ended_at))::float FROM execution e JOIN task t ON t.id = e.task_id "
            "JOIN batch b ON b.id = t.batch_id WHERE b.name = 'bench'").fetchone()[0]


def history(db_url, n):
    """Count what PostgreSQL kept of the timed batch: every task, execution and event."""
    import psycopg
    with psycopg.connect(db_url.replace("+psycopg", "", 1)) as conn:
        tasks, executions = conn.execute(
            "SELECT count(DISTINCT t.id), count(e.id) FROM task t JOIN batch b ON b.id = t.batch_id "
            "LEFT JOIN execution e ON e.task_id = t.id AND e.status = 'succeeded' "
            "WHERE b.name = 'bench' AND t.status = 'succeeded'").fetchone()
        events = conn.execute(
            "SELECT count(*) FROM event ev JOIN execution e ON ev.object_type = 'execution' "
            "AND ev.object_id = e.id JOIN task t ON t.id = e.task_id JOIN batch b ON b.id = t.batch_id "
            "WHERE b.name = 'bench' AND ev.kind IN ('execution.assigned', 'execution.running', "
            "'execution.succeeded')").fetchone()[0]
    ok = tasks == n and executions == n and events == 3 * n
    return (f"history {'complete' if ok else 'INCOMPLETE'}: {tasks} tasks, {executions} executions, "
            f"{events} execution events")


def _prefetches(text):
    """--prefetch: auto or integers from 0, comma-separated (argparse says so in one line, exit 2)."""
    try:
        values = [x if x == "auto" else int(x) for x in text.split(",")]
    except ValueError:
        values = [-1]
    if any(v != "auto" and v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: auto or integers from 0, comma-separated")
    return values


def main():
    global profile_seconds
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--prefetch", default="auto,16,128", type=_prefetches,
                    help="tasks a worker holds besides those it runs: one scitq and one Celery run each")
    ap.add_argument("--only", default="limit,celery,scitq", help="which systems, comma-separated")
    ap.add_argument("--profile", metavar="DIR",
                    help="py-spy record the scitq server and first worker into DIR/profile-*.txt")
    ap.add_argument("--profile-seconds", type=int, default=10)
    args = ap.parse_args()
    profile_seconds = args.profile_seconds
    only = args.only.split(",")
    prefetches = args.prefetch
    runs = [("limit", None, "limit: 8 threads, subprocess.run", lambda d: run_limit(args.tasks))]
    runs += [("celery", p, f"celery 5 + redis, {WORKERS}x prefork {CONCURRENCY // WORKERS} p{p}",
              lambda d, p=p: run_celery(args.tasks, d, p)) for p in prefetches]
    runs += [("scitq", p, f"scitq + postgresql, {WORKERS}x c{CONCURRENCY // WORKERS} p{p}",
              lambda d, p=p: run_scitq(args.tasks, d, p, args.profile)) for p in prefetches]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        for i, (name, prefetch, label, fn) in enumerate(runs):
            if name in only:
                d = tmp / str(i)
                d.mkdir()
                os.chmod(d, 0o755)
                print(f"{label}...", file=sys.stderr, flush=True)
                rows.append((name, prefetch, label, *fn(d)))
    print(f"\n{args.tasks} tasks `sh -c true`, total concurrency {CONCURRENCY} "
          f"({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    print(f"{'system':<38}{'seconds':>9}{'tasks/s':>10}{'CPU ms/task':>13}  notes")
    rate = {}
    for name, prefetch, label, elapsed, cpu, note in rows:
        rate[name, prefetch] = args.tasks / elapsed
        print(f"{label:<38}{elapsed:>9.1f}{rate[name, prefetch]:>10.0f}{cpu / args.tasks * 1000:>13.2f}  {note}")
    for name, prefetch, label, *_ in rows:
        if name != "scitq":
            continue
        goals = (2, 0.6) if prefetch == "auto" else (1.5, 0.5)
        for other, key, goal in (("celery", ("celery", prefetch), goals[0]), ("limit", ("limit", None), goals[1])):
            if key in rate:
                ratio = rate[name, prefetch] / rate[key]
                print(f"{label.split(', ')[-1]}: scitq/{other} {ratio:.2f} "
                      f"(goal >= {goal}: {'met' if ratio >= goal else 'MISSED'})")


if __name__ == "__main__":
    main()
