"""Docker tasks through a real server, worker and docker engine (tests/dockerd.py), on both
databases: the mounts a task sees, its uploaded output, a kill, and an engine that is not there."""
import docker

from procs import wait_until


def ended(live, tid, timeout=60):
    return wait_until(lambda: (t := live.task(tid))["status"] in ("succeeded", "failed") and t,
                      timeout, 0.1, f"task {tid} to end")


def test_a_docker_task_sees_its_mounts_and_its_output_is_uploaded(live, procs, dockerd, tmp_path):
    data = tmp_path / "files"
    data.mkdir()
    (data / "reads.txt").write_text("ACGT\nTTGA\n")
    (data / "ref.txt").write_text("reference\n")
    procs.worker(live.url, "dw", 2, "--docker-host", dockerd.host)
    tid = live.add_task(
        'wc -l < /input/reads.txt > /output/count.txt; cat /resource/ref.txt; '
        'echo "$INPUT $OUTPUT $RESOURCE $TEMP"; '
        'if touch /resource/x 2>/dev/null; then echo writable; else echo read-only; fi; '
        'echo $GREETING >&2',
        container=dockerd.image, container_options="-e GREETING=hello",
        inputs=[f"file://{data}/reads.txt"], resources=[f"file://{data}/ref.txt"],
        output=f"file://{tmp_path}/out/")["id"]
    t = ended(live, tid)
    assert t["status"] == "succeeded", t
    assert live.output(tid)[0] == b"reference\n/input /output /resource /tmp\nread-only\n"
    assert live.output(tid, "stderr")[0] == b"hello\n"
    assert (tmp_path / "out" / "count.txt").read_text() == "2\n"

    # A kill stops the container; it fails without retry and leaves no container behind.
    tid = live.add_task("sleep 60", container=dockerd.image, retries=2)["id"]
    wait_until(lambda: live.task(tid)["status"] == "running", 60, what="the container to run")
    live.kill_task(tid)
    t = ended(live, tid, timeout=20)
    assert (t["status"], t["executions"][0]["reason"], len(t["executions"])) == ("failed", "killed", 1)
    engine = docker.DockerClient(base_url=dockerd.host)
    try:
        wait_until(lambda: not engine.containers.list(all=True, filters={"label": "scitq=1"}), 20,
                   what="no container left")
    finally:
        engine.close()


def test_no_engine_fails_the_attempt_with_a_clear_reason(live, procs, tmp_path):
    procs.worker(live.url, "nodocker", 1, "--docker-host", f"unix://{tmp_path}/none.sock")
    tid = live.add_task("true", container="busybox", retries=1)["id"]
    t = ended(live, tid)
    ex = t["executions"][-1]
    assert (t["status"], ex["reason"]) == ("failed", "docker")
    assert ex["error"].startswith(f"docker engine not reachable at unix://{tmp_path}/none.sock")
    assert len(t["executions"]) == 2           # an engine may come back: it is retried
