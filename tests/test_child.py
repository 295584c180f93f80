"""A task's process as the worker runs it (scitq.worker.child): both streams pumped in one
coroutine, whatever their sizes, the exit code as Popen gives it, and no descriptor left."""
import asyncio
import os

import pytest

from scitq.worker import child

pytestmark = pytest.mark.skipif(not child.available(), reason="this kernel gives no pidfd")


class Sink:
    def __init__(self):
        self.data = bytearray()
        self.closed = 0

    async def feed(self, data):
        assert not self.closed
        self.data += data
        await asyncio.sleep(0)          # a sink that yields, as a send does

    async def close(self):
        self.closed += 1


def run(script, cwd="/", env=None):
    async def scenario():
        proc = child.Child(["/bin/sh", "-c", script], cwd=cwd, env=env or {b"PATH": b"/usr/bin:/bin"})
        sinks = [Sink(), Sink()]
        rc = await proc.run(sinks)
        return proc, rc, sinks
    return asyncio.run(scenario())


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_both_streams_larger_than_a_pipe_arrive_whole():
    # 1 MiB on each stream, written alternately: reading one to its end first would block
    # the child on the other's full pipe for ever.
    script = "i=0; while [ $i -lt 16 ]; do head -c 65536 /dev/zero; head -c 65536 /dev/zero >&2; i=$((i+1)); done"
    before = open_fds()
    proc, rc, (out, err) = run(script)
    assert rc == 0 and proc.returncode == 0
    assert bytes(out.data) == bytes(1 << 20) and bytes(err.data) == bytes(1 << 20)
    assert out.closed == 1 and err.closed == 1
    assert open_fds() == before


def test_exit_codes_and_signals_as_popen_gives_them():
    assert run("exit 3")[1] == 3
    assert run("kill -9 $$")[1] == -9
    assert run("echo out; echo err >&2")[2][0].data == b"out\n"


def test_cwd_and_environment_are_the_tasks():
    proc, rc, (out, _) = run('pwd; echo "$TEMP"', cwd="/tmp", env={b"TEMP": b"/x y", b"PATH": b"/bin"})
    assert out.data == b"/tmp\n/x y\n"


def test_it_waits_for_what_holds_the_pipes_after_the_exit():
    # The shell exits at once; its background child keeps stdout open, then writes.
    proc, rc, (out, _) = run("(sleep 0.3; echo late) &")
    assert rc == 0 and out.data == b"late\n"


def test_cancelled_it_leaves_no_descriptor():
    async def scenario():
        proc = child.Child(["/bin/sh", "-c", "sleep 5"], cwd="/", env={})
        running = asyncio.ensure_future(proc.run([Sink(), Sink()]))
        await asyncio.sleep(0.1)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        os.killpg(proc.pid, 9)
        proc.popen.wait()
    before = open_fds()
    asyncio.run(scenario())
    assert open_fds() == before
