"""A fleet against one real server: 300 workers polling while a user reads, and tasks of
seconds spread over every worker by the prefetch the workers size themselves."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from procs import wait_until

FLEETSIM = Path(__file__).parent / "fleetsim.py"


def start_fleet(procs, url, names, concurrency):
    names_file = procs.tmp / f"fleet-{names[0]}.json"
    names_file.write_text(json.dumps([[n, None] for n in names]))
    log = open(procs.tmp / f"fleet-{names[0]}.log", "w")
    proc = subprocess.Popen([sys.executable, str(FLEETSIM), url, str(names_file), str(concurrency),
                             str(procs.tmp / "work")], stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    log.close()
    procs.started.append(proc)      # killed at cleanup if the test fails before its end
    return proc


def stop_fleet(proc):
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def test_ui_reads_answer_while_300_workers_poll(live, procs):
    n = 300
    fleet = start_fleet(procs, live.url, [f"f{i:03d}" for i in range(n)], 2)
    wait_until(lambda: len(live.workers()) == n, 120, interval=0.5, what=f"{n} workers")
    # Work for a third of them, in tasks of a few seconds: polls, reports and claims go on
    # while the user reads.
    live.add_tasks([{"command": f"sleep {2 + i % 3}"} for i in range(200)], batch="fleet")
    slowest = {}
    with httpx.Client(base_url=live.url, timeout=30) as user:
        for _ in range(20):
            for path in ("/ui/", "/api/v1/batches", "/api/v1/workers", "/api/v1/tasks?batch=fleet&limit=50"):
                t0 = time.monotonic()
                r = user.get(path)
                took = time.monotonic() - t0
                assert r.status_code == 200, (path, r.status_code, r.text[:200])
                slowest[path] = max(slowest.get(path, 0), took)
            time.sleep(0.25)
    assert max(slowest.values()) < 1.0, slowest         # each read within 1 s, as users need
    summary = live.wait_batch("fleet", timeout=120)
    assert summary["counts"]["succeeded"] == 200
    assert not [w["name"] for w in live.workers() if w["status"] == "lost"]
    assert stop_fleet(fleet)["retries"] == 0            # no worker call was refused or timed out


def test_long_tasks_spread_over_every_worker_after_short_ones(live, procs):
    """Short tasks first: the workers' queues grow deep. Then tasks of 5 s, as many as there
    are slots: each worker runs two and holds none queued, whatever depth it had."""
    for name in ("a", "b", "c"):
        procs.worker(live.url, f"spread-{name}", 2)
    wait_until(lambda: len(live.workers()) == 3, 30, what="3 workers")
    live.add_tasks([{"command": "true"} for _ in range(2000)], batch="short")
    # short tasks: each worker asks for a queue deeper than its concurrency
    wait_until(lambda: max(w["depth"] for w in live.workers()) > 2, 60, interval=0.05,
               what="a deep queue")
    live.wait_batch("short", timeout=120)

    ids = live.add_tasks([{"command": "sleep 5"} for _ in range(6)], batch="long")
    time.sleep(3)                           # each started within 1 s of its submission, or waits
    running = {}
    for tid in ids:
        t = live.task(tid)
        assert t["status"] == "running", (tid, t["status"], [w["depth"] for w in live.workers()])
        worker = t["executions"][-1]["worker"]
        running[worker] = running.get(worker, 0) + 1
    assert sorted(running.values()) == [2, 2, 2], running
    live.wait_batch("long", timeout=60)


def test_worker_calls_past_the_queue_are_refused_with_retry_after(client, monkeypatch):
    """A fleet larger than the server can serve: calls beyond those running and those
    waiting get a 503 with Retry-After at once, never a hang or a 500."""
    import threading

    from scitq.server.api import workers as api
    admission = api.Admission(running=1, waiting=1)
    monkeypatch.setattr(api, "WORKER_CALLS", admission)
    # A long lease: the worker is never overdue here (see test_admission.py for that case).
    monkeypatch.setattr(client.application.extensions["scitq"].dispatcher, "lease", 3600.0)
    r = client.post("/api/v1/workers", json={"name": "w1"})
    assert r.status_code == 201
    wid = r.json["id"]
    held = admission()
    held.__enter__()                            # the one running slot, held
    waiter = threading.Thread(target=lambda: client.post(f"/api/v1/workers/{wid}/reports",
                                                         json={"reports": []}))
    waiter.start()
    wait_until(lambda: admission.waiting == 1, 10, what="a call waiting for its turn")
    refused = client.post(f"/api/v1/workers/{wid}/reports", json={"reports": []})
    assert refused.status_code == 503 and 5 <= int(refused.headers["Retry-After"]) <= 15
    assert "retry later" in refused.json["error"]
    held.__exit__(None, None, None)             # the waiting call then goes through
    waiter.join(10)
    assert not waiter.is_alive() and admission.refused == 1
