"""Docker tasks on the worker: containers run on a real engine (the session's own dockerd,
tests/dockerd.py) with scitq's mounts, output and controls; the options' grammar is in
test_taskspec.py."""
import asyncio
import os
import time

import pytest

from scitq.errors import ContainerError
from scitq.taskspec import parse_options
from scitq.worker.container import ContainerRun, task_environ

G = 1024 ** 3


def test_an_env_name_alone_takes_the_workers_value_but_no_secret(monkeypatch):
    monkeypatch.setenv("SCITQ_TEST_VAR", "from worker")
    monkeypatch.setenv("SCITQ_TOKEN", "the worker's own")
    monkeypatch.delenv("SCITQ_TEST_UNSET", raising=False)
    assert parse_options("-e SCITQ_TEST_VAR -e SCITQ_TOKEN -e SCITQ_TEST_UNSET",
                         environ=task_environ()) == {"environment": {"SCITQ_TEST_VAR": "from worker"}}


def test_parsed_options_are_what_the_engine_gets(dockerd):
    """The kwargs land in the container's config as docker run would put them."""
    import docker
    kwargs = parse_options("-e FOO=1 -v /srv:/data:ro --gpus all --shm-size 2g -u 1000:1000 "
                           "-w /work --cpus 2 --memory 64m --cap-add SYS_ADMIN")
    client = docker.DockerClient(base_url=dockerd.host)
    container = client.containers.create(dockerd.image, ["true"], labels={"scitq": "1"}, **kwargs)
    try:
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
    finally:
        container.remove(force=True)
        client.close()
    assert "FOO=1" in config["Env"]
    assert (config["User"], config["WorkingDir"]) == ("1000:1000", "/work")
    assert host["Binds"] == ["/srv:/data:ro"]
    assert host["DeviceRequests"][0]["Count"] == -1
    assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert (host["ShmSize"], host["NanoCpus"], host["Memory"]) == (2 * G, 2 * 10 ** 9, 64 << 20)
    assert host["CapAdd"] == ["SYS_ADMIN"]


# --- containers on the real engine -----------------------------------------------

@pytest.fixture
def task_dirs(tmp_path):
    """A task's dirs on the host and scitq's mounts of them, as the worker makes them."""
    dirs = {name: tmp_path / name for name in ("input", "output", "temp", "resource")}
    for d in dirs.values():
        d.mkdir()
    mounts = [(str(dirs["input"]), "/input", False), (str(dirs["output"]), "/output", False),
              (str(dirs["temp"]), "/tmp", False), (str(dirs["resource"]), "/resource", True)]
    env = {"CPU": "2", "INPUT": "/input", "OUTPUT": "/output", "TEMP": "/tmp",
           "RESOURCE": "/resource"}
    return dirs, mounts, env


@pytest.fixture(autouse=True)
def no_container_left(request):
    """After each test on the engine, no container labelled scitq=1 remains there."""
    yield
    if "dockerd" not in request.fixturenames:
        return
    import docker
    client = docker.DockerClient(base_url=request.getfixturevalue("dockerd").host)
    try:
        left = client.containers.list(all=True, filters={"label": "scitq=1"})
        for c in left:
            c.remove(force=True)
    finally:
        client.close()
    assert not left, f"containers left behind: {[c.name for c in left]}"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def read_both(r):
    return await asyncio.gather(r.stdout.read(), r.stderr.read())


SCRIPT = r"""
cat /input/in.txt > /output/copy.txt
echo "$FOO $INPUT $CPU" > /output/env.txt
echo scratch > /tmp/scratch.txt
cat /resource/ref.txt > /output/ref.txt
touch /resource/new 2> /output/ro.txt
echo "touch rc $?" >> /output/ro.txt
seq 1 300000 &
seq 1 100000 | sed 's/^/e/' >&2 &
wait
exit 3
"""


def test_mounts_output_and_exit_code(dockerd, task_dirs):
    dirs, mounts, env = task_dirs
    (dirs["input"] / "in.txt").write_text("input data\n")
    (dirs["resource"] / "ref.txt").write_text("reference\n")

    async def scenario():
        r = ContainerRun(dockerd.image, SCRIPT, mounts=mounts, env=dict(env, FOO="bar"),
                         docker_host=dockerd.host)
        await r.start()
        try:
            out, err = await read_both(r)
            return out, err, await r.wait()
        finally:
            await r.remove()

    out, err, rc = run(scenario())
    assert rc == 3
    # ~2.6 MB in all, each stream complete, in order, and apart from the other
    assert out == "".join(f"{i}\n" for i in range(1, 300001)).encode()
    assert err == "".join(f"e{i}\n" for i in range(1, 100001)).encode()
    assert (dirs["output"] / "copy.txt").read_text() == "input data\n"
    assert (dirs["output"] / "env.txt").read_text() == "bar /input 2\n"
    assert (dirs["temp"] / "scratch.txt").read_text() == "scratch\n"
    assert (dirs["output"] / "ref.txt").read_text() == "reference\n"
    ro = (dirs["output"] / "ro.txt").read_text()
    assert "Read-only file system" in ro and "touch rc 1" in ro
    assert not (dirs["resource"] / "new").exists()


def test_a_slow_reader_holds_the_output_back(dockerd, task_dirs):
    """Nothing reads for a while: the readers hold a bounded amount, then all of it arrives."""
    _, mounts, env = task_dirs
    size = 8 << 20

    async def scenario():
        r = ContainerRun(dockerd.image, f"head -c {size} /dev/zero", mounts=mounts, env=env,
                         docker_host=dockerd.host)
        await r.start()
        try:
            await asyncio.sleep(1.5)
            held = len(r.stdout._buffer)          # asyncio's own buffer: the thing to bound
            out, err = await read_both(r)
            return held, len(out), err, await r.wait()
        finally:
            await r.remove()

    held, got, err, rc = run(scenario())
    assert 0 < held <= 2 * (64 << 10) + (64 << 10), held
    assert (got, err, rc) == (size, b"", 0)


def test_kill_then_remove(dockerd, task_dirs):
    _, mounts, env = task_dirs

    async def scenario():
        r = ContainerRun(dockerd.image, "echo started; sleep 30", mounts=mounts, env=env,
                         docker_host=dockerd.host, name="scitq-test-kill")
        await r.start()
        assert await r.stdout.readline() == b"started\n"
        t0 = time.monotonic()
        await r.kill()
        rc = await r.wait()
        took = time.monotonic() - t0
        await r.kill()                           # after the end: nothing to do, no error
        await r.remove()
        await r.remove()
        return rc, took, r.id

    rc, took, cid = run(scenario())
    assert rc == 137 and took < 5
    import docker
    client = docker.DockerClient(base_url=dockerd.host)
    try:
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(cid)
    finally:
        client.close()


def test_pause_freezes_and_resume_goes_on(dockerd, task_dirs):
    dirs, mounts, env = task_dirs
    counter = dirs["output"] / "count"
    script = "i=0; while true; do i=$((i+1)); echo $i > /output/count; sleep 0.05; done"

    def count():
        try:
            return int(counter.read_text() or 0)
        except (FileNotFoundError, ValueError):  # caught between truncate and write
            return 0

    async def until(predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    async def scenario():
        r = ContainerRun(dockerd.image, script, mounts=mounts, env=env, docker_host=dockerd.host)
        await r.start()
        try:
            await until(lambda: count() >= 3)
            await r.pause()
            await r.pause()                       # twice: no error
            await asyncio.sleep(0.3)              # a write under way lands
            frozen = count()
            await asyncio.sleep(1)
            still = count()
            await r.resume()
            await r.resume()
            await until(lambda: count() > still + 3)
            await r.pause()                       # killed while paused: it still ends
            await r.kill()
            rc = await r.wait()
            await r.resume()                      # after the end: nothing to do, no error
            await r.pause()
            return frozen, still, rc
        finally:
            await r.remove()

    frozen, still, rc = run(scenario())
    assert frozen == still
    assert rc == 137


def test_an_empty_entrypoint_clears_the_images(dockerd, task_dirs):
    import docker
    _, mounts, env = task_dirs
    client = docker.DockerClient(base_url=dockerd.host)
    base = client.containers.create(dockerd.image, ["true"])
    image = base.commit("scitq-test/entrypoint", "latest", changes=['ENTRYPOINT ["echo", "entry"]'])
    base.remove()

    async def scenario(options):
        r = ContainerRun(image.id, "echo cmd", mounts=mounts, env=env, options=options,
                         docker_host=dockerd.host)
        await r.start()
        try:
            out, _ = await read_both(r)
            return out
        finally:
            await r.remove()

    try:
        assert run(scenario(None)) == b"entry /bin/sh -c echo cmd\n"
        assert run(scenario("--entrypoint ''")) == b"cmd\n"
    finally:
        client.images.remove(image.id, force=True)
        client.close()


def test_unreachable_engine():
    async def scenario():
        r = ContainerRun("anything", "true", mounts=[], env={},
                         docker_host="unix:///nonexistent.sock")
        await r.start()

    with pytest.raises(ContainerError) as exc:
        run(scenario())
    assert str(exc.value).startswith("docker engine not reachable at unix:///nonexistent.sock: ")


def test_missing_image_and_bad_command_leave_nothing(dockerd, task_dirs):
    _, mounts, env = task_dirs
    # a registry that refuses at once: the pull is tried and fails without leaving the host
    image = "localhost:1/scitq-test/absent:latest"

    async def scenario(image, command, **kw):
        r = ContainerRun(image, command, mounts=mounts, env=env, docker_host=dockerd.host, **kw)
        with pytest.raises(ContainerError) as exc:
            await r.start()
        assert await r.stdout.read() == b"" and await r.stderr.read() == b""
        await r.kill()
        await r.remove()
        return str(exc.value)

    message = run(scenario(image, "true"))
    assert message.startswith(f"image {image} is not present on this worker's docker engine")
    assert "\n" not in message
    message = run(scenario(dockerd.image, "/nonexistent", shell=False))
    assert message.startswith("cannot start the container: ") and "/nonexistent" in message
    message = run(scenario(dockerd.image, "true", options="--foo"))
    assert message.startswith("unsupported container option '--foo'")


def test_network_is_off_unless_asked(dockerd, task_dirs):
    _, mounts, env = task_dirs

    async def scenario(options):
        r = ContainerRun(dockerd.image, "ls /sys/class/net", mounts=mounts, env=env,
                         options=options, docker_host=dockerd.host)
        await r.start()
        try:
            out, _ = await read_both(r)
            assert await r.wait() == 0
            return sorted(out.split())
        finally:
            await r.remove()

    assert run(scenario(None)) == [b"lo"]
    host_links = sorted(name.encode() for name in os.listdir("/sys/class/net"))
    assert run(scenario("--network host")) == host_links
