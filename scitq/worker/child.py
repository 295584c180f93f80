"""A task's process for the event loop, without asyncio's subprocess machinery.

`asyncio.create_subprocess_exec` builds a subprocess transport, two pipe transports with
their protocols, two stream readers and a child watcher around each process: for a task
that runs a few milliseconds that was a third of the worker's Python per task (profiled
on the throughput bench). `Child` starts the same process group with `subprocess.Popen`,
reads its pipes by non-blocking `os.read` on the running loop, and learns of its exit
through a pidfd (Linux 5.3): the same behaviour for less than half the Python.
"""
import asyncio
import os
import subprocess

_PIDFD = None       # whether this kernel gives pidfds (checked once)


def available():
    global _PIDFD
    if _PIDFD is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
            _PIDFD = True
        except (AttributeError, OSError):       # Python built without it, kernel < 5.3
            _PIDFD = False
    return _PIDFD


class PipeReader:
    """The read end of a child's pipe: `await read(n)` as asyncio.StreamReader.read does
    (b"" at the end of the stream, and the descriptor is closed then)."""

    def __init__(self, fd):
        os.set_blocking(fd, False)
        self.fd = fd

    async def read(self, n):
        while self.fd is not None:
            try:
                data = os.read(self.fd, n)
            except BlockingIOError:
                await _readable(self.fd)
                continue
            if not data:
                self.close()
            return data
        return b""

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Child:
    """A process (its own session, so its own process group) with its stdout and stderr
    as PipeReaders. `pid`, `returncode` and `await wait()` as asyncio's Process has them."""

    def __init__(self, argv, cwd, env):
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                          cwd=cwd, env=env, start_new_session=True)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self.pid = self.popen.pid
        self.returncode = None
        # A pidfd of a child that has already exited still works: it stays a zombie (and
        # its pid ours) until waited for below.
        self._pidfd = os.pidfd_open(self.pid)
        self.stdout = PipeReader(out_r)
        self.stderr = PipeReader(err_r)

    async def wait(self):
        if self.returncode is None:
            await _readable(self._pidfd)
            _, status = os.waitpid(self.pid, 0)
            os.close(self._pidfd)
            self.returncode = self.popen.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


async def _readable(fd):
    """Until fd is readable (the loop's selector tells)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, _set, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _set(future):
    if not future.done():
        future.set_result(None)
