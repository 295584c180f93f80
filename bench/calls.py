"""The server's own CPU per worker call, in-process: what one report, poll or registration
costs the server's Python, without the network, the worker or the client.

    python bench/calls.py [--calls 200] [--db postgresql|sqlite|both] [--profile N]

The app (`create_app`, auth off, no dispatcher thread) on a throwaway PostgreSQL and/or a
SQLite file; Flask's test client makes the calls a worker of concurrency 4 makes under
load, and the CPU of the calling thread (`time.thread_time`) is taken around each:
- register: a worker's registration (a new name each time);
- poll, empty: a poll that finds nothing (`wait` 0);
- start + claim: a report of one start with `more`, the answer bringing nothing new
  (the worker is full);
- end + claim: a report of one success with `more`, which claims the next task in the
  same transaction (what a worker sends for every task under load).
A task of seconds costs the server about "start" plus "end + claim". The figures are
medians over --calls calls, in ms. With --profile N, cProfile's N heaviest functions
(cumulative) of the "end + claim" calls are printed too. The database runs on the same
2 cores.
"""
import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # noqa: E402

API = "/api/v1"


def call(client, method, path, expect, body):
    r = client.open(API + path, method=method, json=body)
    if r.status_code != expect:
        raise SystemExit(f"{method} {path}: {r.status_code} {r.get_data()[:300]!r}")
    return r.get_json()


def timed(fn):
    t0 = time.thread_time()
    out = fn()
    return (time.thread_time() - t0) * 1e3, out


def measure(db_url, data_dir, n, profile):
    from scitq.server import create_app
    app = create_app({"DATA_DIR": data_dir, "DATABASE": db_url})
    client = app.test_client()
    dispatcher = app.extensions["scitq"].dispatcher
    try:
        figures = {"register": [], "poll, empty": [], "start + claim": [], "end + claim": []}
        wid = call(client, "POST", "/workers", 201, {"name": "w", "concurrency": 4, "prefetch": 0})["id"]
        call(client, "POST", "/tasks/bulk", 201,
             {"batch": "calls", "tasks": [{"command": "true"} for _ in range(n + 8)]})
        dispatcher.dispatch()
        held = [a["execution_id"] for a in call(client, "POST", f"/workers/{wid}/poll", 200,
                                                {"wait": 0})["assignments"]]
        for i in range(n):
            ms, _ = timed(lambda: call(client, "POST", f"/workers/{wid}/poll", 200,
                                       {"wait": 0, "known": held}))
            figures["poll, empty"].append(ms)
        prof = cProfile.Profile() if profile else None
        for i in range(n):
            eid = held.pop(0)
            ms, _ = timed(lambda: call(client, "POST", f"/workers/{wid}/reports", 200, {
                "reports": [{"execution_id": eid, "status": "running", "pid": 1}], "more": True}))
            figures["start + claim"].append(ms)
            if prof:
                prof.enable()
            ms, answer = timed(lambda: call(client, "POST", f"/workers/{wid}/reports", 200, {
                "reports": [{"execution_id": eid, "status": "succeeded", "return_code": 0}],
                "more": True}))
            if prof:
                prof.disable()
            figures["end + claim"].append(ms)
            held += [a["execution_id"] for a in answer["assignments"]]
        for i in range(n):      # last: no pass runs, so they take none of the tasks above
            ms, _ = timed(lambda: call(client, "POST", "/workers", 201, {"name": f"reg-{i}"}))
            figures["register"].append(ms)
        return figures, prof
    finally:
        app.extensions["scitq"].db.dispose()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--db", choices=("postgresql", "sqlite", "both"), default="both")
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    args = ap.parse_args()
    if args.calls < 1 or args.profile < 0:
        ap.error("--calls must be at least 1 and --profile at least 0")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        if args.db in ("sqlite", "both"):
            (tmp / "s").mkdir()
            rows.append(("sqlite", *measure(f"sqlite:///{tmp}/s/calls.db", tmp / "s", args.calls, args.profile)))
        if args.db in ("postgresql", "both"):
            cluster = pgcluster.start(tmp / "pg")
            try:
                (tmp / "p").mkdir()
                url = cluster.create_database("calls")
                rows.append(("postgresql", *measure(url, tmp / "p", args.calls, args.profile)))
            finally:
                cluster.stop()
    print(f"server CPU per call, ms, median of {args.calls} (2 cores, load {os.getloadavg()[0]:.1f})")
    print(f"{'database':<12}" + "".join(f"{k:>16}" for k in rows[0][1]))
    for name, figures, _ in rows:
        print(f"{name:<12}" + "".join(f"{statistics.median(v):>16.2f}" for v in figures.values()))
    for name, _, prof in rows:
        if prof:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.profile)
            print(f"\n--- {name}: end + claim, cumulative\n" + out.getvalue())


if __name__ == "__main__":
    main()
