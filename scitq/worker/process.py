"""One execution on the worker: staged, run as a process group or a container, its output
streamed, its $OUTPUT uploaded."""
import asyncio
import base64
import hashlib
import logging
import os
import shlex
import shutil
import signal
import tempfile
import time
from pathlib import Path

from scitq.errors import Conflict, ContainerError, StagingError
from scitq.worker import child
from scitq.worker.credential import is_secret

log = logging.getLogger("scitq.worker")


class OutputPump:
    """One stream of the child (fed to it, or read from an asyncio `reader`), sent to the
    server in chunks, by offset.

    Memory stays bounded: when `flush_bytes` are waiting, reading stops until they are
    sent, so a child printing faster than the network simply blocks on its pipe.
    """

    read_bytes = 1 << 16        # one read from the pipe
    flush_bytes = 1 << 20       # buffered bytes that make the reader wait for a send
    flush_interval = 0.5        # seconds output may wait in the worker before it is sent
    inline_bytes = 64 << 10     # the last bytes ride with the end report when this small

    def __init__(self, link, execution_id, stream, reader=None):
        self.link = link
        self.execution_id = execution_id
        self.stream = stream
        self.reader = reader
        self.buf = bytearray()
        self.offset = 0            # bytes the server has acknowledged
        self.lock = asyncio.Lock()
        self.refused = False       # the server refuses this output (execution lost)
        self._eof = asyncio.Event()
        self._ticker = None

    async def run(self):
        """Pump `reader` (an asyncio.StreamReader) to its end."""
        try:
            while chunk := await self.reader.read(self.read_bytes):
                await self.feed(chunk)
        finally:
            await self.close()

    async def feed(self, chunk):
        self.buf += chunk
        if len(self.buf) >= self.flush_bytes:
            await self.flush()
        elif self._ticker is None:  # started by the first bytes: a silent stream costs no timer task
            self._ticker = asyncio.create_task(self._tick())

    async def close(self):
        """The stream ended: a send in flight finishes (cancelling it could lose its bytes)."""
        self._eof.set()
        if self._ticker is not None:
            await self._ticker

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


DIRS = ("input", "output", "temp", "resource")


class ScratchDirs:
    """The directories of executions ($INPUT, $OUTPUT, $TEMP, $RESOURCE under one root),
    kept for a next execution when a task leaves them empty.

    Making five directories and removing them again costs several milliseconds on a
    journaled disk (measured: 6-12 ms, more than running a short task), while checking
    that four directories are empty costs microseconds. A task that left anything behind
    has its whole root removed, as before; only empty, unchanged sets are reused.
    """

    keep = 64       # empty sets kept at most

    def __init__(self, workdir, owner=None):
        self.workdir = Path(workdir)
        self.owner = owner      # the TaskUser whose the directories are made, or None: this process's
        self.uid = owner.uid if owner else os.getuid()
        self.free = []
        self.mode = None        # of a new directory (the umask decides)
        self._names = {}        # root -> {dir: path as text}, for the sets in use or kept

    def names(self, root):
        """{"input": "/…/input", …}: the directories of a set as text (for the environment;
        made once per set, not per task)."""
        names = self._names.get(root)
        if names is None:
            names = self._names[root] = {name: str(root / name) for name in DIRS}
        return names

    def take(self):
        """A root holding the four empty directories."""
        if self.free:
            return self.free.pop()
        root = Path(tempfile.mkdtemp(prefix="exec-", dir=self.workdir))
        for name in DIRS:
            (root / name).mkdir()
        if self.owner is not None:
            for path in (root, *(root / name for name in DIRS)):
                self.owner.hand_over(path)
        if self.mode is None:
            self.mode = (root / DIRS[0]).stat().st_mode & 0o7777
        return root

    def give_back(self, root):
        if len(self.free) < self.keep and self._pristine(root):
            self.free.append(root)
        else:
            self.remove(root)

    def remove(self, root):
        self._names.pop(root, None)
        shutil.rmtree(root, ignore_errors=True)

    def _pristine(self, root):
        try:
            with os.scandir(root) as entries:
                names = []
                for entry in entries:
                    if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                        return False
                    st = entry.stat(follow_symlinks=False)
                    if st.st_mode & 0o7777 != self.mode or st.st_uid != self.uid:
                        return False
                    names.append(entry.name)
            if sorted(names) != sorted(DIRS):
                return False
            for path in self.names(root).values():
                with os.scandir(path) as entries:
                    if next(entries, None) is not None:
                        return False
            return True
        except OSError:
            return False


class Execution:
    """One assignment on the worker: staged as soon as it arrives (so prefetched tasks are
    ready when a slot frees), then run as a process group or a container, its $OUTPUT
    uploaded whatever the exit status, and its end reported with a reason.

    `report` is called with the running and the final report (and signal acknowledgements).
    """

    def __init__(self, assignment, link, report, workdir, cpus, resources=None, docker_host=None,
                 staging_slots=None, scratch=None, task_user=None):
        self.a = assignment
        self.id = assignment["execution_id"]
        self.link = link
        self.report = report
        self.cpus = cpus
        self.resources = resources
        self.docker_host = docker_host
        self.staging_slots = staging_slots or asyncio.Semaphore(4)
        self.scratch = scratch or ScratchDirs(workdir, task_user)
        self.task_user = task_user  # the TaskUser its process runs as, or None: the worker's user
        self._root = None           # its directories, taken when staged or started
        self.proc = None            # the process group leader, for a shell task
        self.container = None       # the ContainerRun, for a docker task
        self.killed = None          # the reason it was killed for, once it was
        self.timed_out = False
        self._timer = None          # the timeout's next look
        self.paused_since = None    # monotonic time of the pause in force
        self.paused_total = 0.0
        self.cache_hit = None
        self.staging_error = None
        self.staging = None         # the staging task, started by stage()

    @property
    def root(self):
        """Its directories' root, taken at first need: a prefetched task without inputs
        holds none while it waits (a deep prefetch would, else, make and remove sets past
        those ScratchDirs keeps)."""
        if self._root is None:
            self._root = self.scratch.take()
        return self._root

    @property
    def dirs(self):
        """$INPUT, $OUTPUT, $TEMP and $RESOURCE as Paths (the hot path takes scratch.names)."""
        return {name: Path(path) for name, path in self.scratch.names(self.root).items()}

    # -- before --------------------------------------------------------------

    def stage(self):
        """Start fetching inputs and resources now, if it has any; run() waits for it."""
        if self.a.get("inputs") or self.a.get("resources") or self.a.get("use_cache"):
            self.staging = asyncio.create_task(self._stage())
        return self.staging

    async def _stage(self):
        from scitq.worker import staging
        limit = self.a.get("staging_timeout")
        async with self.staging_slots:
            deadline = time.monotonic() + limit if limit else None
            try:
                if self.a.get("inputs"):
                    await asyncio.to_thread(staging.stage_inputs, self.a["inputs"],
                                            self.dirs["input"], deadline)
                    if self.task_user is not None:      # its inputs are the task's to change, as its dirs
                        await asyncio.to_thread(self.task_user.hand_over, self.dirs["input"], True)
                if self.a.get("resources"):
                    await asyncio.to_thread(self.resources.prepare, self.a["resources"],
                                            self.dirs["resource"], deadline)
                if self.a.get("use_cache"):
                    hashes = await asyncio.to_thread(input_hashes, self.dirs["input"])
                    answer = await self.link.call("POST", f"/executions/{self.id}/cache",
                                                  json={"inputs": hashes})
                    hit = answer.get("hit")
                    # A result is reusable when its outputs can be copied to ours (or none is wanted).
                    if hit and (not self.a.get("output") or hit.get("output")):
                        self.cache_hit = hit
            except StagingError as err:
                if err.reason == "staging_timeout":
                    self.staging_error = ("staging_timeout", f"staging took longer than {limit:g}s: {err}")
                else:
                    self.staging_error = (err.reason, str(err))

    # -- the run ---------------------------------------------------------------

    def argv(self):
        if self.a.get("shell", True):
            return ["/bin/sh", "-c", self.a["command"]]
        return shlex.split(self.a["command"])

    def env(self, inside_container=False):
        d = self.scratch.names(self.root)
        if inside_container:
            d = {"input": "/input", "output": "/output", "temp": "/tmp", "resource": "/resource"}
        env = {"CPU": str(self.cpus), "INPUT": d["input"], "OUTPUT": d["output"],
               "RESOURCE": d["resource"], "TEMP": d["temp"], "TMPDIR": d["temp"],
               "SCITQ_TASK_ID": str(self.a["task_id"]), "SCITQ_EXECUTION_ID": str(self.id),
               "SCITQ_BATCH": self.a.get("batch") or ""}
        if self.task_user is not None and not inside_container:
            env.update(self.task_user.env())
        return env

    async def run(self):
        try:
            if self.staging is None:
                self.stage()
            try:
                if self.staging is not None:
                    await self.staging
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
            final = await self._run()
            if final is not None:
                self.report(final)
        finally:
            if self._root is not None:
                self.scratch.give_back(self._root)

    async def _run(self):
        ended = {"execution_id": self.id}
        if self.killed:
            return {**ended, "status": "failed", "reason": "killed", "error": "killed before it started"}
        if self.staging_error:
            reason, error = self.staging_error
            self.report({"execution_id": self.id, "status": "running"})
            return {**ended, "status": "failed", "reason": reason, "error": error[:1000]}
        if self.cache_hit:
            return await self._reuse(ended)
        try:
            pumps, ending = await self._launch()
        except (OSError, ValueError, ContainerError) as exc:
            self.report({"execution_id": self.id, "status": "running"})
            reason = "docker" if isinstance(exc, ContainerError) else "error"
            why = str(exc) if isinstance(exc, ContainerError) else f"cannot start the command: {exc}"
            return {**ended, "status": "failed", "reason": reason, "error": why[:1000]}
        rc = await self._wait(ending)
        final = {**ended, "return_code": rc, "status": "succeeded" if rc == 0 else "failed"}
        if self.timed_out:
            final.update(status="failed", reason="timeout",
                         error=f"timeout: still running after {self.a['timeout']:g}s; killed")
        elif self.killed:
            final.update(status="failed", reason="killed", error="killed on request")
        elif rc < 0:
            final["error"] = f"killed by signal {signal.Signals(-rc).name}"
        elif self.container is not None and rc == 137 and not self.killed:
            final["error"] = "killed (exit 137: out of memory?)"
        await self._upload(final)
        for p in pumps:
            chunk = await p.tail()
            if chunk:
                final[p.stream] = chunk
        return final

    async def _launch(self):
        """Start the process or container; returns its output pumps and the coroutine that
        pumps its output and returns its exit code."""
        pumps = [OutputPump(self.link, self.id, name) for name in ("stdout", "stderr")]
        if self.a.get("container"):
            from scitq.worker.container import ContainerRun
            d = self.dirs
            self.container = ContainerRun(
                self.a["container"], self.a["command"], shell=self.a.get("shell", True),
                mounts=[(str(d["input"]), "/input", False), (str(d["output"]), "/output", False),
                        (str(d["temp"]), "/tmp", False), (str(d["resource"]), "/resource", True)],
                env=self.env(inside_container=True), options=self.a.get("container_options"),
                docker_host=self.docker_host, name=f"scitq-{self.id}")
            try:
                await self.container.start()
            except BaseException:
                await self.container.remove()
                raise
            self.report({"execution_id": self.id, "status": "running"})
            return pumps, _pumped(pumps, (self.container.stdout, self.container.stderr),
                                  self.container.wait())
        names = self.scratch.names(self.root)
        as_user = self.task_user.popen_args() if self.task_user is not None else {}
        if child.available():
            self.proc = child.Child(self.argv(), cwd=names["temp"], env=task_environment(self.env()),
                                    **as_user)
            self.report({"execution_id": self.id, "status": "running", "pid": self.proc.pid})
            return pumps, self.proc.run(pumps)
        # no pidfd here (a kernel older than 5.3): asyncio's own machinery
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=names["temp"],
            env=task_environment(self.env()), start_new_session=True, **as_user)
        self.report({"execution_id": self.id, "status": "running", "pid": self.proc.pid})
        return pumps, _pumped(pumps, (self.proc.stdout, self.proc.stderr), self.proc.wait())

    async def _wait(self, ending):
        """Await `ending`, killing the run at its timeout (time spent paused does not
        count); returns the exit code."""
        if self.a.get("timeout"):
            self._deadline(time.monotonic())
        try:
            return await ending
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if self.container is not None:
                await self.container.remove()

    def _deadline(self, started):
        """Kill the run if its time is up, else look again when it would be."""
        left = self.a["timeout"] - self.ran_for(started)
        if left <= 0 and self.paused_since is None:
            self.timed_out = True
            self._timer = None
            self.kill(reason=None)
        else:
            self._timer = asyncio.get_running_loop().call_later(max(left, 0.05), self._deadline, started)

    def ran_for(self, started):
        paused = self.paused_total + (time.monotonic() - self.paused_since if self.paused_since else 0)
        return time.monotonic() - started - paused

    async def _upload(self, final):
        """$OUTPUT goes to the task's output URI, whatever the exit status."""
        if not self.a.get("output"):
            return
        from scitq.worker import staging
        try:
            await asyncio.to_thread(staging.upload_outputs, self.dirs["output"], self.a["output"],
                                    None, self.task_user)
        except StagingError as err:
            if final["status"] == "succeeded":
                final.update(status="failed", reason="upload", error=str(err)[:1000])
            else:
                final["error"] = f"{final.get('error') or 'failed'}; and {err}"[:1000]

    async def _reuse(self, ended):
        """The same command on the same inputs succeeded before: take its result."""
        hit = self.cache_hit
        self.report({"execution_id": self.id, "status": "running"})
        if self.a.get("output") and hit["output"] != self.a["output"]:
            from scitq.worker import staging
            try:
                await asyncio.to_thread(staging.copy_outputs, hit["output"], self.a["output"],
                                        self.root)
            except StagingError as err:
                return {**ended, "status": "failed", "reason": "upload",
                        "error": f"cannot copy the cached outputs: {err}"[:1000]}
        return {**ended, "status": "succeeded", "return_code": 0, "cached_from": hit["execution_id"]}

    # -- signals ----------------------------------------------------------------

    def kill(self, reason="killed"):
        """SIGKILL the whole process group (or the container); before the start, cancel."""
        if reason and not self.killed:
            self.killed = reason
        if self.staging is not None and not self.staging.done():
            self.staging.cancel()
        if self.container is not None:
            asyncio.ensure_future(self.container.kill())
        self._signal(signal.SIGKILL)

    def pause(self):
        if self.paused_since is None and self._started():
            self.paused_since = time.monotonic()
            if self.container is not None:
                asyncio.ensure_future(self.container.pause())
            self._signal(signal.SIGSTOP)

    def resume(self):
        if self.paused_since is not None:
            self.paused_total += time.monotonic() - self.paused_since
            self.paused_since = None
            if self.container is not None:
                asyncio.ensure_future(self.container.resume())
            self._signal(signal.SIGCONT)

    def _started(self):
        return self.container is not None or self.proc is not None

    def _signal(self, sig):
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            if sig == signal.SIGKILL:
                try:     # a stopped group must be continued to die of its SIGKILL at once
                    os.killpg(self.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def discard(self):
        """Given back before it ran: stop staging, forget its files."""
        if self.staging is not None:
            self.staging.cancel()
        if self._root is not None:
            self.scratch.remove(self._root)     # staging may still write into it


async def _pumped(pumps, readers, wait):
    """Pump each reader into its pump while awaiting `wait`; returns what `wait` returns."""
    for pump, reader in zip(pumps, readers):
        pump.reader = reader
    *_, rc = await asyncio.gather(*(p.run() for p in pumps), wait)
    return rc


_BASE_ENV = None


def task_environment(variables):
    """The worker's environment without its secrets, with a task's `variables`, as bytes
    (Popen takes them so, and encodes text for each process). The worker's own is read and
    encoded once: os.environ decodes every variable on each read."""
    global _BASE_ENV
    if _BASE_ENV is None:
        _BASE_ENV = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items() if not is_secret(k)}
    env = _BASE_ENV.copy()
    for k, v in variables.items():
        env[k.encode()] = os.fsencode(v)
    return env


def input_hashes(input_dir):
    """[{path, sha256}] of every staged input file: the server makes the cache key from them
    and the task as it stored it (a worker's word on the command would let it poison the cache)."""
    out = []
    for path in sorted(p for p in Path(input_dir).rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        out.append({"path": str(path.relative_to(input_dir)), "sha256": h.hexdigest()})
    return out
