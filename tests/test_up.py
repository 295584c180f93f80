"""`scitq up`'s local worker: a work folder of its own, dies with `up` (even on SIGKILL), started
again when it dies, never shadowed by the current folder. `scitq up` is the SQLite default by
definition: these run on SQLite only (the server's database code is the one of every test)."""
import os
import re
import signal
import time

import psutil

from procs import wait_for_url, wait_until
from scitq.client import Client


def start_up(procs, tmp_path, name, *args, cwd=None):
    """A `scitq up` on a free port with its own data dir, run as the `scitq` command."""
    data = tmp_path / f"data-{name}"
    up = procs.spawn(["up", "--port", "0", "--data-dir", str(data), "--concurrency", "2", *args],
                     f"up-{name}.log", cwd=cwd, script=True)
    up.url = wait_for_url(up)
    up.data = data
    up.client = Client(up.url, token=(data / "admin.token").read_text().strip())
    return up


def local_worker(up, timeout=30):
    """The live worker process under `up` (waited for: it starts after the server listens)."""
    def find():
        kids = [p for p in psutil.Process(up.pid).children() if "worker" in p.cmdline()]
        return kids[0] if kids else None
    return wait_until(find, timeout, what="the local worker process")


def run_task(client, command, timeout=60):
    tid = client.add_task(command)["id"]
    wait_until(lambda: client.task(tid)["status"] in ("succeeded", "failed"), timeout,
               what=f"task {command!r} to end")
    return client.task(tid), client.output(tid)[0]


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_two_ups_apart_and_one_from_a_folder_holding_scitq(procs, tmp_path):
    """Acceptance 1 and 3: stopping one `scitq up` leaves the other's worker running tasks;
    `scitq up` from a folder that holds a `scitq/` package runs a task."""
    shadow = tmp_path / "clones"
    (shadow / "scitq").mkdir(parents=True)
    (shadow / "scitq" / "__init__.py").write_text("raise ImportError('the wrong scitq')\n")
    first = start_up(procs, tmp_path, "first", cwd=shadow)
    second = start_up(procs, tmp_path, "second")
    try:
        assert "the wrong scitq" not in first.log_path.read_text()
        task, out = run_task(first.client, "echo from the first")
        assert task["status"] == "succeeded" and out == b"from the first\n"
        task, out = run_task(second.client, "echo from the second")
        assert task["status"] == "succeeded" and out == b"from the second\n"
        assert procs.stop(second) == 0
        task, out = run_task(first.client, "echo still here; pwd")
        assert task["status"] == "succeeded", first.log_path.read_text()[-3000:]
        assert out.startswith(b"still here\n" + str(first.data / "worker").encode())
        assert "FileNotFoundError" not in first.log_path.read_text()
    finally:
        first.client.close()
        second.client.close()


def test_the_local_worker_is_restarted_and_dies_with_up(procs, tmp_path):
    """Acceptance 2: killing the worker, `scitq up` starts it again and a task queued meanwhile
    runs; SIGKILL of `scitq up` leaves no worker (nor task) process after 5 s."""
    up = start_up(procs, tmp_path, "one")
    try:
        worker = local_worker(up)
        assert run_task(up.client, "true")[0]["status"] == "succeeded"
        worker.kill()
        tid = up.client.add_task("echo queued meanwhile")["id"]
        wait_until(lambda: up.client.task(tid)["status"] == "succeeded", 90,
                   what="the task queued while the worker was dead")
        log = up.log_path.read_text()
        assert re.search(r"the local worker exited \(killed by signal 9.*starting it again in", log), log
        again = local_worker(up)
        assert again.pid != worker.pid

        sleeper = up.client.add_task("sleep 300")["id"]
        wait_until(lambda: up.client.task(sleeper)["status"] == "running", 30, what="sleep running")
        family = [again.pid] + [p.pid for p in again.children(recursive=True)]
        assert len(family) >= 2                     # the worker and its task
        os.kill(up.pid, signal.SIGKILL)
        up.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(gone(pid) for pid in family):
            time.sleep(0.1)
        left = [pid for pid in family if not gone(pid)]
        assert left == [], [(p, psutil.Process(p).cmdline(), psutil.Process(p).status()) for p in left]
    finally:
        up.client.close()


def test_a_worker_that_keeps_dying_stops_up_with_its_error(procs, tmp_path):
    """After repeated deaths `scitq up` exits non-zero with the worker's last error."""
    data = tmp_path / "data-broken"
    data.mkdir()
    (data / "worker").write_text("a file where the worker's folder should be\n")
    up = procs.spawn(["up", "--port", "0", "--data-dir", str(data)], "up-broken.log", script=True)
    wait_for_url(up)
    assert up.wait(120) == 1
    log = up.log_path.read_text()
    assert log.count("the local worker exited") == 4, log
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: the local worker died 5 times in a row; its last error: ")
    assert "is a file" in last.split("its last error: ")[1]     # the worker's own words
    assert not (data / "server.json").exists()
