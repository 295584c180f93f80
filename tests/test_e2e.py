"""The walking skeleton end to end: real `scitq server` and `scitq worker` processes."""
import os
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import psutil
import pytest

from scitq.errors import TasksFailed

from procs import wait_until


def executions_of(client, task_ids):
    out = {}
    for tid in task_ids:
        out[tid] = client.task(tid)["executions"]
    return out


def max_overlap(intervals):
    """Largest number of [start, end] intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


def test_two_workers_run_a_batch_of_200(live, procs):
    procs.worker(live.url, "w2", 2)
    procs.worker(live.url, "w3", 3)
    ids = live.add_tasks([{"command": f"sleep 0.02; echo task {i}; echo note {i} >&2",
                           "name": f"t{i}"} for i in range(200)], batch="b200")
    summary = live.wait_batch("b200", interval=0.5, timeout=180)

    assert summary["counts"]["succeeded"] == 200
    assert summary["counts"]["remaining"] == 0
    per_worker = defaultdict(list)
    for i, tid in enumerate(ids):
        assert live.output(tid)[0] == f"task {i}\n".encode()
        assert live.output(tid, "stderr")[0] == f"note {i}\n".encode()
        (ex,) = live.task(tid)["executions"]
        assert ex["status"] == "succeeded" and ex["return_code"] == 0
        per_worker[ex["worker"]].append((datetime.fromisoformat(ex["started_at"]),
                                         datetime.fromisoformat(ex["ended_at"])))
    assert set(per_worker) == {"w2", "w3"}
    assert max_overlap(per_worker["w2"]) <= 2
    assert max_overlap(per_worker["w3"]) <= 3


def test_a_failing_task_keeps_its_code_and_stderr(live, procs):
    procs.worker(live.url, "w", 2)
    ok = live.add_tasks([{"command": f"echo fine {i}"} for i in range(5)], batch="mixed")
    bad = live.add_task("echo partial; echo 'it broke' >&2; exit 3", batch="mixed")["id"]
    more = live.add_tasks([{"command": "echo after"} for _ in range(5)], batch="mixed")
    with pytest.raises(TasksFailed) as failed:          # a failed task cannot be missed
        live.wait_batch("mixed", interval=0.2, timeout=60)
    summary = failed.value.batch
    assert "1 task(s) failed" in failed.value.message

    assert summary["counts"]["failed"] == 1 and summary["counts"]["succeeded"] == 10
    task = live.task(bad)
    assert task["status"] == "failed"
    assert task["executions"][-1]["return_code"] == 3
    assert live.output(bad, "stderr")[0] == b"it broke\n"
    assert live.output(bad)[0] == b"partial\n"
    assert all(live.task(t)["status"] == "succeeded" for t in ok + more)


def test_raising_concurrency_applies_within_two_seconds(live, procs):
    procs.worker(live.url, "elastic", 1)
    ids = live.add_tasks([{"command": "sleep 4"} for _ in range(6)], batch="elastic")
    wait_until(lambda: live.batch("elastic")["counts"]["running"] == 1, 30, what="first task running")
    time.sleep(0.5)
    assert live.batch("elastic")["counts"]["running"] == 1   # concurrency 1 holds

    changed_at = datetime.now(timezone.utc)
    cli = subprocess.run([sys.executable, "-m", "scitq.cli", "--server", live.url,
                          "worker", "set", "elastic", "--concurrency", "4"],
                         capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    wait_until(lambda: live.batch("elastic")["counts"]["running"] == 4, 10, what="4 running")

    starts = sorted(datetime.fromisoformat(ex["started_at"])
                    for exs in executions_of(live, ids).values() for ex in exs
                    if ex["started_at"])
    late = [s for s in starts if s > changed_at]
    assert len(late) == 3, starts
    assert max(late) - changed_at < timedelta(seconds=2)
    assert live.worker("elastic")["concurrency"] == 4


def test_200_mb_of_output_with_a_small_worker(live, procs):
    size = 200 * 1000 * 1000
    worker = procs.worker(live.url, "big", 1)
    tid = live.add_task(f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {size}",
                        batch="big")["id"]
    rss = psutil.Process(worker.pid)
    peak = 0
    deadline = time.monotonic() + 300
    while live.task(tid)["status"] not in ("succeeded", "failed"):
        peak = max(peak, rss.memory_info().rss)
        assert time.monotonic() < deadline, "200 MB task did not finish in 5 minutes"
        time.sleep(0.05)

    (ex,) = live.task(tid)["executions"]
    assert ex["status"] == "succeeded"
    assert ex["stdout_bytes"] == size
    line = b"0123456789abcdefghijklmnopqrstuvwxyz\n"
    offset = (size // 2) // len(line) * len(line)          # a line boundary in the middle
    data, total, complete = live.output(tid, offset=offset, limit=len(line) * 3)
    assert data == line * 3 and total == size and complete
    tail, _, _ = live.output(tid, offset=size - 10)
    assert tail == bytes(line[p % len(line)] for p in range(size - 10, size))
    assert peak < 150 * 1024 * 1024, f"worker RSS peaked at {peak / 2**20:.0f} MiB"


def test_sigterm_drains_a_worker(live, procs):
    worker = procs.worker(live.url, "drainer", 2)
    ids = live.add_tasks([{"command": "sleep 1.5; echo done"} for _ in range(4)], batch="drain")
    wait_until(lambda: live.batch("drain")["counts"]["running"] == 2, 30, what="2 running")
    assert procs.stop(worker) == 0
    statuses = sorted(live.task(t)["status"] for t in ids)
    assert statuses == ["pending", "pending", "succeeded", "succeeded"]
    assert live.worker("drainer")["status"] == "offline"
    for tid in ids:
        if live.task(tid)["status"] == "succeeded":
            assert live.output(tid)[0] == b"done\n"


def test_tasks_see_cpu_temp_and_lead_their_own_process_group(live, procs):
    procs.worker(live.url, "env", 2)
    tid = live.add_task('echo "$CPU|$TEMP|$$|$(ps -o pgid= -p $$ | tr -d " ")"; '
                        'touch "$TEMP/scratch" && test -d "$TEMP" && pwd')["id"]
    live.wait_batch("default", interval=0.2, timeout=30)
    first, cwd = live.output(tid)[0].decode().splitlines()
    cpu, temp, pid, pgid = first.split("|")
    assert int(cpu) == max(1, (os.cpu_count() or 1) // 2)
    assert temp == cwd and temp.startswith(str(procs.tmp / "work"))
    assert pid == pgid                          # the shell leads a group of its own
    assert not os.path.exists(temp)   # the scratch dir went with the task


def test_sigterm_stops_a_server_with_workers_still_polling(live, procs):
    procs.worker(live.url, "poller", 1)
    wait_until(lambda: live.workers(), 30, what="the worker")
    time.sleep(0.5)                              # it is in a long poll now
    server = procs.started[0]
    t0 = time.monotonic()
    assert procs.stop(server, timeout=15) == 0
    assert time.monotonic() - t0 < 5


def test_settings_set_on_the_server_outlive_worker_and_server_restarts(db_url, procs):
    """Concurrency 3 and a pause set on the server hold when the worker process restarts under
    its name with -c 1, and when the server restarts on the same database (down longer than
    the lease, so the worker may be taken for lost and heard again)."""
    from pgcluster import free_port
    from scitq.client import Client
    port = str(free_port())
    server = procs.server(db_url, "--lease", "2", "--port", port)
    with Client(server.url) as client:
        worker = procs.worker(server.url, "keeper", 1)
        wait_until(lambda: any(w["name"] == "keeper" for w in client.workers()), 30, what="worker")
        client.set_worker("keeper", concurrency=3, status="paused")
        assert procs.stop(worker) == 0
        assert client.worker("keeper")["status"] == "offline"
        procs.worker(server.url, "keeper", 1)                   # the same name, its own -c 1
        wait_until(lambda: client.worker("keeper")["status"] == "paused", 30, what="re-registered")
        said = "(id %d, concurrency 3)" % client.worker("keeper")["id"]
        wait_until(lambda: said in (procs.tmp / "worker-keeper.log").read_text(), 10, what=said)

    assert procs.stop(server) == 0
    server.log_path.rename(procs.tmp / "server-first.log")
    time.sleep(3)                                               # past the lease
    server = procs.server(db_url, "--lease", "2", "--port", port)
    with Client(server.url) as client:
        restarted = time.time()
        wait_until(lambda: datetime.fromisoformat(client.worker("keeper")["last_seen"]).timestamp()
                   > restarted, 30, what="the worker heard by the new server")
        w = client.worker("keeper")
        assert (w["status"], w["concurrency"]) == ("paused", 3)
        assert w["set_on_server"] == {"concurrency": 3, "status": "paused"}
        client.add_tasks([{"command": "sleep 3"} for _ in range(6)], batch="kept")
        time.sleep(1)
        assert client.batch("kept")["counts"]["running"] == 0      # paused: nothing taken
        client.set_worker("keeper", status="running")
        wait_until(lambda: client.batch("kept")["counts"]["running"] == 3, 30, what="3 running")
        time.sleep(0.5)
        assert client.batch("kept")["counts"]["running"] == 3      # its concurrency, not its -c 1
