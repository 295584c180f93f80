"""Task semantics end to end, with real `scitq server` and `scitq worker` processes on both
databases: retries, timeouts, the dependency DAG, signals, lost workers, an unreachable
server, and S3 staging (moto's server on loopback)."""
import os
import signal
import socket
import time
import uuid
from datetime import datetime

import psutil

from procs import wait_until
from scitq.client import Client


def ended(live, tid, timeout=60):
    return wait_until(lambda: (t := live.task(tid))["status"] in ("succeeded", "failed", "canceled") and t,
                      timeout, 0.1, f"task {tid} to end")


def at(value):
    return datetime.fromisoformat(value)


def group_alive(pgid):
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return False


def test_a_flaky_task_succeeds_on_its_third_attempt(live, procs, tmp_path):
    procs.worker(live.url, "w", 1)
    counter = tmp_path / "count"
    tid = live.add_task(f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; '
                        f'echo "attempt $n"; [ "$n" -ge 3 ]', retries=3)["id"]
    t = ended(live, tid)
    assert t["status"] == "succeeded" and t["attempt"] == 3
    assert [(e["status"], e["return_code"]) for e in t["executions"]] == [
        ("failed", 1), ("failed", 1), ("succeeded", 0)]
    outputs = [live.output(tid, execution_id=e["id"])[0] for e in t["executions"]]
    assert outputs == [b"attempt 1\n", b"attempt 2\n", b"attempt 3\n"]


def test_a_timeout_kills_the_whole_process_group(live, procs):
    procs.worker(live.url, "w", 1)
    tid = live.add_task("sleep 30 & sleep 31; wait", timeout=1)["id"]
    running = wait_until(lambda: (t := live.task(tid))["status"] == "running" and t, 30, 0.05,
                         "the task to run")
    started = time.monotonic()
    t = ended(live, tid, timeout=10)
    assert time.monotonic() - started < 3
    (ex,) = t["executions"]
    assert (t["status"], ex["reason"]) == ("failed", "timeout")
    assert "timeout" in ex["error"]
    assert (at(ex["ended_at"]) - at(ex["started_at"])).total_seconds() < 3
    pgid = running["executions"][0]["pid"]
    assert pgid and not group_alive(pgid)


def test_a_diamond_in_order_then_a_failed_root_cancels_and_force_runs(live, procs):
    procs.worker(live.url, "w", 3)
    ids = live.add_tasks([
        {"ref": "a", "command": "sleep 0.3"},
        {"ref": "b", "command": "sleep 0.3", "depends_on": ["a"]},
        {"ref": "c", "command": "sleep 0.3", "depends_on": ["a"]},
        {"ref": "d", "command": "echo joined", "depends_on": ["b", "c"]},
    ], batch="diamond")
    live.wait_batch("diamond", interval=0.2, timeout=60)
    ex = {tid: live.task(tid)["executions"][0] for tid in ids}
    a, b, c, d = (ex[t] for t in ids)
    assert all(e["status"] == "succeeded" for e in ex.values())
    assert at(b["started_at"]) >= at(a["ended_at"]) and at(c["started_at"]) >= at(a["ended_at"])
    assert at(d["started_at"]) >= max(at(b["ended_at"]), at(c["ended_at"]))

    ids = live.add_tasks([
        {"ref": "a", "command": "exit 4"},
        {"ref": "b", "command": "echo b", "depends_on": ["a"]},
        {"ref": "c", "command": "echo c", "depends_on": ["a"]},
        {"ref": "d", "command": "echo d", "depends_on": ["b", "c"]},
    ], batch="broken")
    summary = live.wait_batch("broken", interval=0.2, timeout=60, check=False)
    assert (summary["counts"]["failed"], summary["counts"]["canceled"]) == (1, 3)
    assert all(not live.task(t)["executions"] for t in ids[1:])
    assert live.force_task(ids[3])["status"] == "pending"
    assert ended(live, ids[3])["status"] == "succeeded"
    assert live.output(ids[3])[0] == b"d\n"


def test_kill_pause_and_resume_a_running_task(live, procs, tmp_path):
    procs.worker(live.url, "w", 2)
    ticks = tmp_path / "ticks"
    paused = live.add_task(f"while true; do echo x >> {ticks}; sleep 0.05; done")["id"]
    doomed = live.add_task("sleep 60", retries=2)["id"]
    wait_until(lambda: live.batch("default")["counts"]["running"] == 2, 30, what="2 running")
    wait_until(lambda: ticks.exists() and ticks.stat().st_size > 0, 10, what="ticks")

    live.pause_task(paused)
    wait_until(lambda: live.task(paused)["executions"][0]["paused"], 10, what="paused")
    size = ticks.stat().st_size
    time.sleep(0.5)
    assert ticks.stat().st_size == size                      # frozen
    live.resume_task(paused)
    wait_until(lambda: ticks.stat().st_size > size, 10, what="ticking again")
    # the worker reports the resume just after it continued the process
    wait_until(lambda: live.task(paused)["executions"][0]["paused"] is False, 10, what="resume reported")

    live.kill_task(doomed)
    t = ended(live, doomed, timeout=10)
    assert (t["status"], t["reason"], len(t["executions"])) == ("failed", "killed by user", 1)
    assert t["executions"][0]["reason"] == "killed"
    live.kill_task(paused)
    assert ended(live, paused, timeout=10)["status"] == "failed"


def test_a_killed_worker_s_tasks_finish_elsewhere_after_the_lease(db_url, procs):
    server = procs.server(db_url, "--lease", "3")
    live = Client(server.url)
    doomed = procs.worker(server.url, "doomed", 3)
    ids = live.add_tasks([{"command": f"sleep 1.5; echo task {i}"} for i in range(3)], batch="lease")
    wait_until(lambda: live.batch("lease")["counts"]["running"] == 3, 30, what="3 running")
    pgids = [live.task(t)["executions"][0]["pid"] for t in ids]
    os.kill(doomed.pid, signal.SIGKILL)
    for pgid in pgids:      # its orphans would finish, but could never report: end them too
        os.killpg(pgid, signal.SIGKILL)
    procs.worker(server.url, "rescuer", 3)
    summary = live.wait_batch("lease", interval=0.2, timeout=60)
    assert summary["counts"]["succeeded"] == 3
    for i, tid in enumerate(ids):
        t = live.task(tid)
        lost, done = t["executions"]
        assert (lost["worker"], lost["status"], lost["reason"]) == ("doomed", "lost", "lost")
        assert (done["worker"], done["status"]) == ("rescuer", "succeeded")
        assert t["attempt"] == 1                              # the lost attempt was not spent
        assert at(done["assigned_at"]) >= at(lost["ended_at"])   # never two live executions
        assert live.output(tid)[0] == f"task {i}\n".encode()
    assert live.worker("doomed")["status"] == "lost"
    live.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_worker_keeps_its_results_while_the_server_is_down(db_url, procs):
    port = str(free_port())
    server = procs.server(db_url, "--port", port)
    live = Client(server.url)
    procs.worker(server.url, "patient", 1)
    tid = live.add_task("sleep 1.5; echo survived")["id"]
    wait_until(lambda: live.task(tid)["status"] == "running", 30, what="running")
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    time.sleep(3)                      # the task ends while nobody listens
    procs.server(db_url, "--port", port)
    t = ended(live, tid, timeout=60)
    assert t["status"] == "succeeded" and len(t["executions"]) == 1
    assert live.output(tid)[0] == b"survived\n"
    live.close()


def test_s3_inputs_outputs_and_a_resource_fetched_once_for_20_tasks(live, procs, s3_server):
    s3 = s3_server.client()
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="ref/genome.txt", Body=b"ACGT\n" * 1000)
    for i in range(20):
        s3.put_object(Bucket=bucket, Key=f"in/sample{i}.txt", Body=f"sample {i}\n".encode())
    procs.worker(live.url, "s3w", 4, env=s3_server.env())
    ids = live.add_tasks([{
        "command": f'cat $INPUT/sample{i}.txt > $OUTPUT/result.txt; wc -c < $RESOURCE/genome.txt '
                   f'>> $OUTPUT/result.txt; stat -c %a $RESOURCE/genome.txt',
        "inputs": [f"s3://{bucket}/in/sample{i}.txt"],
        "resources": [f"s3://{bucket}/ref/genome.txt"],
        "output": f"s3://{bucket}/out/{i}/"} for i in range(20)], batch="s3")
    summary = live.wait_batch("s3", interval=0.2, timeout=120)
    assert summary["counts"]["succeeded"] == 20, [live.task(t)["executions"] for t in ids]
    for i, tid in enumerate(ids):
        body = s3.get_object(Bucket=bucket, Key=f"out/{i}/result.txt")["Body"].read()
        assert body == f"sample {i}\n5000\n".encode()
        assert live.output(tid)[0] == b"444\n"            # shared read-only (docker mounts it ro)
    assert s3_server.gets[f"/{bucket}/ref/genome.txt"] == 1
    assert all(s3_server.gets[f"/{bucket}/in/sample{i}.txt"] == 1 for i in range(20))

    # A missing input fails the attempt with a clear reason; outputs are uploaded anyway.
    tid = live.add_task("echo never", inputs=[f"s3://{bucket}/in/missing.txt"], batch="s3bad")["id"]
    t = ended(live, tid)
    (ex,) = t["executions"]
    assert (t["status"], ex["reason"]) == ("failed", "staging")
    assert "missing.txt" in ex["error"]
    tid = live.add_task("echo partial > $OUTPUT/log.txt; exit 3", output=f"s3://{bucket}/failed/",
                        batch="s3bad")["id"]
    assert ended(live, tid)["status"] == "failed"
    assert s3.get_object(Bucket=bucket, Key="failed/log.txt")["Body"].read() == b"partial\n"


def test_use_cache_reuses_a_result_and_copies_its_outputs(live, procs, tmp_path):
    procs.worker(live.url, "cw", 1)
    data = tmp_path / "in"
    data.mkdir()
    (data / "reads.txt").write_text("ACGT\n" * 10)
    counter = tmp_path / "runs"
    spec = {"command": f"echo ran >> {counter}; wc -l < $INPUT/reads.txt | tee $OUTPUT/n.txt",
            "inputs": [f"file://{data}/reads.txt"], "use_cache": True}
    first = live.add_task(**spec, output=f"file://{tmp_path}/out1/")["id"]
    assert ended(live, first)["status"] == "succeeded"
    second = live.add_task(**spec, output=f"file://{tmp_path}/out2/")["id"]
    t = ended(live, second)
    (ex,) = t["executions"]
    assert (t["status"], ex["reason"]) == ("succeeded", "cached")
    assert ex["cached_from"] == live.task(first)["executions"][0]["id"]
    assert counter.read_text() == "ran\n"                     # it ran once
    assert (tmp_path / "out2" / "n.txt").read_text() == "10\n"
    assert live.output(second)[0] == b"10\n"

    (data / "reads.txt").write_text("ACGT\n" * 11)            # new input content: a new result
    third = live.add_task(**spec, output=f"file://{tmp_path}/out3/")["id"]
    t = ended(live, third)
    assert t["status"] == "succeeded" and t["executions"][0]["reason"] is None
    assert counter.read_text() == "ran\nran\n"
    assert (tmp_path / "out3" / "n.txt").read_text() == "11\n"


def test_prefetched_tasks_are_staged_while_others_run(live, procs, tmp_path):
    import http.server
    import threading

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(1.5)
            body = b"slow data\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        procs.worker(live.url, "pf", 1, "--prefetch", "1")
        first = live.add_task("sleep 2", batch="pf")["id"]
        wait_until(lambda: live.task(first)["status"] == "running", 30, what="first running")
        second = live.add_task("cat $INPUT/data.txt", batch="pf",
                               inputs=[f"http://127.0.0.1:{httpd.server_port}/data.txt"])["id"]
        live.wait_batch("pf", interval=0.2, timeout=60)
        a, b = live.task(first)["executions"][0], live.task(second)["executions"][0]
        assert live.output(second)[0] == b"slow data\n"
        # Its 1.5 s download happened during the first task: it started right after it.
        assert (at(b["started_at"]) - at(a["ended_at"])).total_seconds() < 1.0

        # A staging timeout fails the attempt with its own reason.
        late = live.add_task("true", batch="pf", staging_timeout=0.5,
                             inputs=[f"http://127.0.0.1:{httpd.server_port}/late.txt"])["id"]
        t = ended(live, late, timeout=30)
        assert (t["status"], t["executions"][0]["reason"]) == ("failed", "staging_timeout")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_worker_thought_lost_stops_its_copy_when_it_is_heard_again(db_url, procs, tmp_path):
    server = procs.server(db_url, "--lease", "3")
    live = Client(server.url)
    frozen = procs.worker(server.url, "frozen", 1)
    pids = tmp_path / "pids"
    tid = live.add_task(f"echo $$ >> {pids}; sleep 6; echo done")["id"]
    wait_until(lambda: pids.exists() and pids.read_text().strip(), 30, what="the first copy")
    first = int(pids.read_text().split()[0])
    os.kill(frozen.pid, signal.SIGSTOP)          # silent: the lease runs out, the task moves
    try:
        procs.worker(server.url, "other", 1)
        wait_until(lambda: len(pids.read_text().split()) == 2, 30, what="the second copy")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    # Heard again, the first worker learns its execution is gone and kills its copy.
    wait_until(lambda: not psutil.pid_exists(first) or
               psutil.Process(first).status() == psutil.STATUS_ZOMBIE, 15, what="the first copy to end")
    t = ended(live, tid, timeout=30)
    assert t["status"] == "succeeded"
    assert [(e["worker"], e["status"]) for e in t["executions"]] == [("frozen", "lost"), ("other", "succeeded")]
    live.close()
