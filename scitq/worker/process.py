"""One execution on the worker: a subprocess in its own process group, its output streamed."""
import asyncio
import base64
import logging
import os
import shlex
import shutil
import signal
import tempfile

from scitq.errors import Conflict

log = logging.getLogger("scitq.worker")


class OutputPump:
    """Reads one stream of the child and sends it to the server in chunks, by offset.

    Memory stays bounded: when `flush_bytes` are waiting, reading stops until they are
    sent, so a child printing faster than the network simply blocks on its pipe.
    """

    read_bytes = 1 << 16        # one read from the pipe
    flush_bytes = 1 << 20       # buffered bytes that make the reader wait for a send
    flush_interval = 0.5        # seconds output may wait in the worker before it is sent
    inline_bytes = 64 << 10     # the last bytes ride with the end report when this small

    def __init__(self, link, execution_id, stream, reader):
        self.link = link
        self.execution_id = execution_id
        self.stream = stream
        self.reader = reader
        self.buf = bytearray()
        self.offset = 0            # bytes the server has acknowledged
        self.lock = asyncio.Lock()
        self.refused = False       # the server refuses this output (execution lost)

    async def run(self):
        self._eof = asyncio.Event()
        ticker = asyncio.create_task(self._tick())
        try:
            while chunk := await self.reader.read(self.read_bytes):
                self.buf += chunk
                if len(self.buf) >= self.flush_bytes:
                    await self.flush()
        finally:
            self._eof.set()
            await ticker        # a send in flight finishes: cancelling it could lose its bytes

    async def _tick(self):
        while not self._eof.is_set():
            try:
                await asyncio.wait_for(self._eof.wait(), self.flush_interval)
            except asyncio.TimeoutError:
                if self.buf:
                    await self.flush()

    async def flush(self):
        """Send what is buffered. Bytes leave the buffer only once the server has them, so a
        send that is interrupted is simply made again (the server ignores what it has)."""
        async with self.lock:
            if not self.buf or self.refused:
                self.buf.clear()
                return
            data = bytes(self.buf)
            try:
                await self.link.call("POST", f"/executions/{self.execution_id}/output",
                                     params={"stream": self.stream, "offset": self.offset},
                                     content=data,
                                     headers={"Content-Type": "application/octet-stream"})
            except Conflict as err:
                log.error("execution %s: %s output refused: %s", self.execution_id, self.stream, err)
                self.refused = True
                self.buf.clear()
                return
            del self.buf[:len(data)]
            self.offset += len(data)

    async def tail(self):
        """The end of the output for the final report, or None once it is all sent."""
        if len(self.buf) > self.inline_bytes:
            await self.flush()
        if not self.buf or self.refused:
            return None
        return {"offset": self.offset, "data": base64.b64encode(bytes(self.buf)).decode()}


class Execution:
    """Runs one assignment; `report` is called with the running and the final report."""

    def __init__(self, assignment, link, report, workdir, cpus):
        self.a = assignment
        self.id = assignment["execution_id"]
        self.link = link
        self.report = report
        self.workdir = workdir
        self.cpus = cpus
        self.proc = None

    def argv(self):
        if self.a.get("shell", True):
            return ["/bin/sh", "-c", self.a["command"]]
        return shlex.split(self.a["command"])

    async def run(self):
        temp = tempfile.mkdtemp(prefix=f"exec-{self.id}-", dir=self.workdir)
        env = dict(os.environ, CPU=str(self.cpus), TEMP=temp, TMPDIR=temp,
                   SCITQ_TASK_ID=str(self.a["task_id"]), SCITQ_EXECUTION_ID=str(self.id),
                   SCITQ_BATCH=self.a.get("batch") or "")
        try:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, cwd=temp, env=env, start_new_session=True)
            except (OSError, ValueError) as exc:
                self.report({"execution_id": self.id, "status": "running"})
                self.report({"execution_id": self.id, "status": "failed",
                             "error": f"cannot start the command: {exc}"})
                return
            self.report({"execution_id": self.id, "status": "running", "pid": self.proc.pid})
            pumps = [OutputPump(self.link, self.id, name, stream)
                     for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))]
            await asyncio.gather(*(p.run() for p in pumps))
            rc = await self.proc.wait()
            final = {"execution_id": self.id, "return_code": rc,
                     "status": "succeeded" if rc == 0 else "failed"}
            if rc < 0:
                final["error"] = f"killed by signal {signal.Signals(-rc).name}"
            for p in pumps:
                chunk = await p.tail()
                if chunk:
                    final[p.stream] = chunk
            self.report(final)
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def kill(self, sig=signal.SIGKILL):
        """Signal the whole process group (the shell and everything it started)."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
