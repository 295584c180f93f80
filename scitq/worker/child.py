"""A task's process for the event loop, without asyncio's subprocess machinery.

`asyncio.create_subprocess_exec` builds a subprocess transport, two pipe transports with
their protocols, two stream readers and a child watcher around each process, and the
worker then ran a task for each stream and one for the exit: for a task that runs a few
milliseconds that machinery was most of the worker's Python per task (profiled on the
throughput bench). `Child` starts the same process group with `subprocess.Popen`, and
`Child.run` reads both pipes by non-blocking `os.read` and learns of the exit through a
pidfd (Linux 5.3), all in the one coroutine that awaits it.
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


class Child:
    """A process in its own session (so its own process group), its stdout and stderr on
    pipes. `pid` and `returncode` as asyncio's Process has them. `as_user`: Popen's user, group
    and extra_groups, to run it as another user."""

    read_bytes = 1 << 16        # one read from a pipe

    def __init__(self, argv, cwd, env, **as_user):
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            os.set_blocking(out_r, False)       # ours only: the child's ends block
            os.set_blocking(err_r, False)
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                          cwd=cwd, env=env, start_new_session=True, **as_user)
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
        # its pid ours) until waited for in run().
        self._pidfd = os.pidfd_open(self.pid)
        self._pipes = [out_r, err_r]

    async def run(self, sinks):
        """Give what the child writes on stdout and stderr to `sinks[0]` and `sinks[1]`
        (`await sink.feed(data)`, then `await sink.close()` at the end of its stream), then
        wait for its exit; returns the exit code (-N for a signal, as Popen has it)."""
        streams = dict(zip(self._pipes, sinks))
        try:
            while streams:
                idle = True
                for fd, sink in list(streams.items()):
                    try:
                        data = os.read(fd, self.read_bytes)
                    except BlockingIOError:
                        continue
                    idle = False
                    if data:
                        await sink.feed(data)
                    else:
                        del streams[fd]
                        self._close(fd)
                        await sink.close()
                if idle:
                    await _readable(*streams)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            while pid == 0:      # the pipes close a moment before the process is a zombie
                await _readable(self._pidfd)
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            self.returncode = self.popen.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        finally:
            for fd in list(self._pipes):
                self._close(fd)
            if self._pidfd is not None:       # (cancelled: Popen reaps it later)
                os.close(self._pidfd)
                self._pidfd = None

    def _close(self, fd):
        self._pipes.remove(fd)
        os.close(fd)


async def _readable(*fds):
    """Until one of fds is readable (the loop's selector tells)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    for fd in fds:
        loop.add_reader(fd, _set, ready)
    try:
        await ready
    finally:
        for fd in fds:
            loop.remove_reader(fd)


def _set(future):
    if not future.done():
        future.set_result(None)
