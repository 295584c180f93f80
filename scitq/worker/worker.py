"""The worker loop: register, poll for work, run up to `concurrency` tasks, report, drain."""
import asyncio
import collections
import logging
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

from scitq import __version__
from scitq.errors import BadRequest, Conflict, Forbidden, NotFound, ScitqError, Unauthorized
from scitq.worker.depth import Depth
from scitq.worker.link import ServerLink, ServerUnverified
from scitq.worker.process import Execution, ScratchDirs

log = logging.getLogger("scitq.worker")

PROGRESS = ("running", "succeeded", "failed")      # reports that may wait for report_gap
FINAL = ("succeeded", "failed", "released")         # reports that end an execution here
CPUS = os.cpu_count() or 1     # read once: it reads /sys each time (measured: 6% of a no-op task)


class Worker:
    # Seconds a poll may hang on the server (also the heartbeat; the server ends it by a third
    # of the lease): each poll costs the server a look at the database, so a fleet's idle
    # polls cost less the longer they hang.
    poll_wait = 25.0
    report_batch = 500        # reports sent in one request at most
    # A task's start is told at most this late (seconds): a task that ends sooner has its
    # start and its end sent in one request and applied in one transaction.
    running_delay = 0.05
    # Two report requests are this far apart at least (seconds) while tasks are queued here:
    # under load the reports of many tasks go in one request and one transaction, and the
    # server may take as long to refill the queue. An idle worker's reports go at once.
    report_gap = 0.1

    staging_parallel = 4      # downloads of different tasks at once
    # Queued tasks beyond the depth its tasks now need go back to the server when the oldest
    # of them has waited this long (seconds): after short tasks the queue was deep, and long
    # tasks taken at that depth would wait here while other workers have slots free.
    trim_after = 0.5

    def __init__(self, server, name=None, concurrency=1, prefetch=None, batch=None,
                 workdir=None, token=None, docker_host=None, parent_fd=None, ca=None, task_user=None):
        self.name = name or socket.gethostname()
        self.concurrency = concurrency
        self.prefetch = prefetch            # pinned by a user, or None: sized by self.sizer
        self.sizer = Depth()
        self._auto_depth = 0
        # Whether the server has more tasks than it gives: its last answer to `more` brought
        # all the room asked (`_asked`). Then one task waits here beyond the measured need.
        self._backlog = False
        self._asked = 0
        self._started_at = {}               # execution id -> loop time its run began
        self.batch = batch
        self.status = "running"
        self.workdir = Path(workdir or tempfile.gettempdir()) / f"scitq-{self.name}"
        self.link = ServerLink(server, token=token, poll_wait=self.poll_wait, ca=ca)
        self.id = None
        self.docker_host = docker_host
        self.task_user = task_user          # a taskuser.TaskUser, or None: tasks run as this process
        self.queue = collections.deque()    # Executions not started yet (prefetched, staging)
        self.running = {}                   # execution id -> Execution
        self.held = set()                   # ids accepted and not yet finally acknowledged
        self.reports = []                   # reports not yet acknowledged, in order
        self._unsent_starts = {}            # execution id -> its `running` report, not yet sent
        self._starting = set()              # ids that left the queue, until their start is told
        self._start_told = asyncio.Event()  # set when one of those is told (or ends)
        self.signaled = {}                  # execution id -> seq of the last signal applied
        self._reports_ready = asyncio.Event()
        self._queue_low = asyncio.Event()   # set when the queue falls under half the depth
        self._running_timer = None          # sends held `running` reports when it fires
        self._last_report = 0.0             # loop time of the last report request
        self._news = None                   # "draining" / "offline", sent with the next reports
        self._told_depth = None             # the depth the server heard last
        self._last_freed = 0.0              # loop time a slot last freed (or first filled)
        self.draining = False
        self._poll = None
        self._stop_now = False
        self._registering = None
        self.parent_fd = parent_fd          # a pipe's read end: EOF when the parent is gone

    @property
    def depth(self):
        """Tasks held beyond those running: the pinned prefetch, else the measured need."""
        if self.prefetch is not None:
            return self.prefetch
        if not self.running and not self.queue:
            # Idle, its measures are of tasks that are over: it starts again no deeper than
            # its concurrency (its next tasks may be long) and grows from what they take.
            return min(self._auto_depth, self.concurrency)
        # While tasks wait on the server anyway, one queued here lets the end of a task and
        # the start of the next go in one request, which then brings its successor: one
        # request per task, not two (the server's work per task, at 1,000 workers). No other
        # worker can be idle for it: the server had tasks left for all.
        return max(self._auto_depth, 1 if self._backlog else 0)

    # -- life cycle ---------------------------------------------------------

    async def run(self):
        """Work until drained (SIGTERM, or the server says so); returns an exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain, sig.name)
        if self.parent_fd is not None:
            loop.add_reader(self.parent_fd, self._parent_gone)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.task_user is not None:
            self.workdir.chmod(0o711)       # the task user goes through it to its own directories
        elif os.geteuid() == 0:
            log.warning("tasks run as root: they can read this worker's token (start it with --task-user)")
        self.scratch = ScratchDirs(self.workdir, self.task_user)
        from scitq.worker.staging import ResourceCache
        self.resources = ResourceCache(self.workdir / "resources")
        self._staging_slots = asyncio.Semaphore(self.staging_parallel)
        reporter = asyncio.create_task(self._report_loop())
        trimmer = asyncio.create_task(self._trim_loop())
        try:
            try:
                self._registering = asyncio.create_task(self._register())
                await self._registering
            except (asyncio.CancelledError, ConnectionError):
                if not self._stop_now:
                    raise
                return 1                     # the parent went while the server was unreachable
            except (BadRequest, Conflict, Forbidden, Unauthorized) as err:
                log.error("the server at %s refuses this worker: %s", self.link.url, err.message)
                return 2
            while not (self.draining and not self.running and not self.queue):
                if self._stop_now:
                    break
                try:
                    await self._poll_once()
                except ConnectionError:
                    if not self.link.abandoned:
                        raise
            await self._flush_reports()
            self._news = "offline"
            await self._flush_reports()
            log.info("worker %s drained: exiting", self.name)
            return 0
        except ServerUnverified as err:
            log.error("%s: not sending it the token; exiting", err)
            return 2
        except NotFound:
            log.error("worker %s was deleted on the server: killing its tasks and exiting", self.name)
            for ex in self.running.values():
                ex.kill()
            return 0
        finally:
            reporter.cancel()
            trimmer.cancel()
            for ex in self.running.values():
                ex.kill()
            await self.link.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _parent_gone(self):
        """The parent (`scitq up`, the server itself) died, even by SIGKILL: its end of the
        pipe closed. Nobody will hear a report: kill the tasks and exit at once."""
        if os.read(self.parent_fd, 1):
            return
        asyncio.get_running_loop().remove_reader(self.parent_fd)
        self._stop_now = True
        self.link.abandoned = True       # no call retries for ever, whatever the cancels reach
        for call in (self._poll, self._registering):
            if call is not None:
                call.cancel()
        for ex in self.running.values():
            ex.kill()
        self.reports.clear()
        log.error("the process that started this worker is gone: killing its tasks and exiting")

    def drain(self, why="request"):
        """Take nothing new, give back what has not started, finish what runs, then exit."""
        if self.draining:
            if why in ("SIGTERM", "SIGINT"):
                log.warning("second %s: killing running tasks", why)
                self._stop_now = True
                for ex in self.running.values():
                    ex.kill()
            return
        log.info("draining (%s): %d running, %d queued to give back", why,
                 len(self.running), len(self.queue))
        self.draining = True
        self._news = "draining"
        while self.queue:
            ex = self.queue.popleft()
            ex.discard()
            self._report({"execution_id": ex.id, "status": "released"})
        if self._poll is not None:
            self._poll.cancel()

    async def _register(self):
        info = {"name": self.name, "hostname": socket.gethostname(), "concurrency": self.concurrency,
                "prefetch": self.prefetch, "depth": self._tell_depth(), "cpus": CPUS,
                "version": __version__}
        if self.batch:
            info["batch"] = self.batch
        me = await self.link.call("POST", "/workers", json=info)
        self.id = me["id"]
        # What the server set on a worker of this name outlives a restart: it wins over the flags.
        self.concurrency, self.prefetch = me["concurrency"], me["prefetch"]
        log.info("registered as worker %s (id %s, concurrency %s) at %s",
                 self.name, self.id, self.concurrency, self.link.url)

    # -- work -----------------------------------------------------------------

    async def _poll_once(self):
        # What it holds, less what it reported ended (the server may have applied that
        # already: it would then answer at once that they are no longer this worker's).
        ending = {r["execution_id"] for r in self.reports if r["status"] in FINAL}
        body = {"known": sorted(self.held - ending), "wait": self.poll_wait,
                "concurrency": self.concurrency, "prefetch": self.prefetch, "depth": self._tell_depth(),
                "status": self.status, "stats": self.stats(),
                "signaled": [[eid, seq] for eid, seq in self.signaled.items() if eid in self.held]}
        self._poll = asyncio.create_task(self.link.call("POST", f"/workers/{self.id}/poll", json=body))
        try:
            answer = await self._poll
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            return                          # cancelled by drain(): loop again at once
        finally:
            self._poll = None
        if (answer["concurrency"], answer["prefetch"]) != (self.concurrency, self.prefetch):
            log.info("concurrency %s, prefetch %s (was %s, %s)", answer["concurrency"],
                     answer["prefetch"], self.concurrency, self.prefetch)
            self.concurrency, self.prefetch = answer["concurrency"], answer["prefetch"]
        self.status = answer["status"]
        if self.status == "draining" and not self.draining:
            self.drain("server")
        self._take(answer["assignments"])
        for sig in answer.get("signals") or []:
            self._signal(sig)
        for eid in answer.get("gone") or []:
            self._forget(eid)
        self._start_ready()
        await asyncio.sleep(0)   # let new executions fork before the next poll goes out

    def _take(self, assignments):
        """New executions, from a poll or a reports answer (the same one may come from
        both): staged at once, queued to start."""
        for a in assignments:
            if a["execution_id"] in self.held:
                continue
            self.held.add(a["execution_id"])
            if self.draining:
                self._report({"execution_id": a["execution_id"], "status": "released"})
            else:
                ex = Execution(a, self.link, self._report, self.workdir, self._cpus(),
                               self.resources, self.docker_host, self._staging_slots,
                               self.scratch, self.task_user)
                ex.stage()
                ex.queued_at = asyncio.get_running_loop().time()
                self.queue.append(ex)

    def _cpus(self):
        return max(1, CPUS // max(1, self.concurrency))

    def _signal(self, sig):
        """Apply a user's kill, pause or resume once (the server repeats it until told)."""
        eid, seq, what = sig["execution_id"], sig["seq"], sig["signal"]
        if self.signaled.get(eid, 0) >= seq:
            return
        self.signaled[eid] = seq
        queued = next((ex for ex in self.queue if ex.id == eid), None)
        ex = self.running.get(eid)
        log.info("execution %s: %s", eid, what)
        if what in ("kill", "requeue"):
            if queued is not None:
                self.queue.remove(queued)
                queued.discard()
                self._report({"execution_id": eid, "status": "failed", "reason": "killed",
                              "error": "killed before it started"})
            elif ex is not None:
                ex.kill()
        elif ex is not None:
            ex.pause() if what == "pause" else ex.resume()
        self._report({"execution_id": eid, "status": "signaled", "signal": what, "seq": seq})

    def _forget(self, eid):
        """The server gave this execution to another worker (it thought this one lost): stop
        it, so the task never runs twice at once, and report nothing more of it."""
        queued = next((ex for ex in self.queue if ex.id == eid), None)
        if queued is not None:
            self.queue.remove(queued)
            queued.discard()
        ex = self.running.get(eid)
        if ex is not None:
            log.warning("execution %s was given to another worker: killing it here", eid)
            ex.kill(reason="gone")
            ex.report = lambda report: None
        self.held.discard(eid)
        # Its reports still queued stay: the report loop deletes what it sent by position, and
        # the server refuses them harmlessly (a poll also names executions that just ended).

    def _start_ready(self):
        while self.queue and len(self.running) < self.concurrency and not self.draining:
            ex = self.queue.popleft()
            if not self.running:
                self._last_freed = asyncio.get_running_loop().time()
            self.running[ex.id] = ex
            self._started_at[ex.id] = asyncio.get_running_loop().time()
            self._starting.add(ex.id)
            task = asyncio.create_task(ex.run())
            task.add_done_callback(lambda t, eid=ex.id: self._finished(eid, t))
        if self._queue_is_low():
            self._queue_low.set()

    def _tell_depth(self):
        self._told_depth = self.depth
        return self._told_depth

    def _stalled(self, now):
        """Seconds since a slot last freed while every slot is busy and tasks wait (else 0)."""
        if self.queue and len(self.running) >= self.concurrency:
            return now - self._last_freed
        return 0.0

    def _wanted_depth(self):
        now = asyncio.get_running_loop().time()
        running_for = now - min(self._started_at.values(), default=now)
        # No slot freed for that long: with ends spread over the slots, a task lasts about
        # `concurrency` times as long, at least.
        running_for = max(running_for, self.concurrency * self._stalled(now))
        return self.sizer.wanted(self.concurrency, self.report_gap, running_for)

    async def _trim_loop(self):
        """Give back the queued tasks the measured need no longer covers (sized prefetch
        only): the newest go first, and the server hands them to a worker with room."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.trim_after / 2)
            if self.prefetch is not None or self.draining or not self.queue:
                continue
            self._auto_depth = self._wanted_depth()
            if len(self.queue) <= self.depth or self._stalled(loop.time()) < self.trim_after:
                continue
            log.info("queue of %d beyond the %d its tasks need: giving %d back", len(self.queue),
                     self.depth, len(self.queue) - self.depth)
            while len(self.queue) > self.depth:
                ex = self.queue.pop()
                ex.discard()
                self._report({"execution_id": ex.id, "status": "released"})

    def _queue_is_low(self):
        """Fewer tasks wait here than half the prefetch: the server must hear now (the
        answer to reports brings the next tasks)."""
        return not self.queue or len(self.queue) * 2 < self.depth

    def _finished(self, execution_id, task):
        self.running.pop(execution_id, None)
        self._told_start(execution_id)
        started = self._started_at.pop(execution_id, None)
        self._last_freed = asyncio.get_running_loop().time()
        if started is not None and not task.cancelled():
            self.sizer.task_ended(self._last_freed - started)
            self._auto_depth = self._wanted_depth()
        if self.depth != self._told_depth and self.id is not None:
            self._reports_ready.set()       # the server must hear it (an idle worker's own)
        if not task.cancelled() and task.exception() is not None:
            log.error("execution %s crashed in the worker: %r", execution_id, task.exception())
            self._report({"execution_id": execution_id, "status": "failed",
                          "error": f"worker error: {task.exception()!r}"[:1000]})
        self._start_ready()
        if self.draining and self._poll is not None and not self.running:
            self._poll.cancel()

    # -- reports --------------------------------------------------------------

    def _told_start(self, execution_id):
        if execution_id in self._starting:
            self._starting.remove(execution_id)
            self._start_told.set()

    def _report(self, report):
        status = report.get("status")
        self._told_start(report["execution_id"])
        start = self._unsent_starts.pop(report["execution_id"], None)
        if status == "running":
            self._unsent_starts[report["execution_id"]] = report
        elif start is not None and status in ("succeeded", "failed") and "pid" in start:
            # Ended before its start went out: one report says both (the server records
            # the start first), in the start's place.
            pid = start["pid"]
            start.clear()
            start.update(report, pid=pid)
            self._reports_ready.set()
            return
        self.reports.append(report)
        if status != "running":
            self._reports_ready.set()       # takes the held `running` reports along
        elif self._running_timer is None:
            self._running_timer = asyncio.get_running_loop().call_later(
                self.running_delay, self._reports_ready.set)

    def _outgoing(self, n):
        """The next n reports, to be sent: no end is folded into them any more."""
        sent = self.reports[:n]
        for r in sent:
            self._unsent_starts.pop(r["execution_id"], None)
        return sent

    async def _report_loop(self):
        while True:
            await self._reports_ready.wait()
            self._reports_ready.clear()
            one_by_one = False
            while (self.reports or self._news or self.depth != self._told_depth) and self.id is not None:
                await self._hold_progress()
                await self._with_next_starts()
                if self._running_timer is not None:
                    self._running_timer.cancel()
                    self._running_timer = None
                sent = self._outgoing(1 if one_by_one else self.report_batch)
                news = self._news
                body = self._report_body(sent, news)
                self._last_report = asyncio.get_running_loop().time()
                try:
                    answer = await self.link.call("POST", f"/workers/{self.id}/reports", json=body)
                    self.sizer.answered(asyncio.get_running_loop().time() - self._last_report)
                except NotFound:
                    log.error("worker %s is unknown to the server: stopping", self.name)
                    self._stop_now = True
                    if self._poll is not None:
                        self._poll.cancel()
                    return
                except ScitqError as err:
                    if len(sent) > 1:       # find the bad one: the others must get through
                        one_by_one = True
                        continue
                    log.error("server rejected report %s: %s", sent, err)   # resending cannot help
                    answer = {"refused": []}
                self._acknowledged(sent, news, answer)

    async def _hold_progress(self):
        """Only a task's progress waits, and only while the tasks queued here (half the
        prefetch at least) keep the slots busy: a slot soon idle needs the server to hear at
        once, and so does what a user asked for (a signal applied) or a task given back."""
        wait = self._last_report + self.report_gap - asyncio.get_running_loop().time()
        if (wait > 0 and not self._queue_is_low() and not self._stop_now
                and all(r["status"] in PROGRESS for r in self.reports)):
            # ...and no longer than that: the answer to these reports refills it
            self._queue_low.clear()
            try:
                await asyncio.wait_for(self._queue_low.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _with_next_starts(self):
        """An end frees a slot that a queued task takes at once: its start goes in the same
        request (waiting at most `running_delay` for it). Under load that halves a worker's
        requests, and the server's work per task: one request per task, not two."""
        if not self.queue or self.draining or not any(r["status"] in FINAL for r in self.reports):
            return
        await asyncio.sleep(0)      # the ended task's done callback takes the next one first
        loop = asyncio.get_running_loop()
        while self._starting and not self._stop_now and all(r["status"] in PROGRESS for r in self.reports):
            left = min(self._started_at[eid] for eid in self._starting) + self.running_delay - loop.time()
            if left <= 0:
                return
            self._start_told.clear()
            try:
                await asyncio.wait_for(self._start_told.wait(), left)
            except asyncio.TimeoutError:
                return

    def _report_body(self, sent, news):
        self._told_depth = self.depth
        body = {"reports": sent, "queued": len(self.queue), "depth": self._told_depth}
        self._asked = 0
        if news:
            body["status"] = news
        elif not self.draining and self.status == "running" and (room := self._room()) > 0:
            body["more"] = True     # the next tasks come in the answer
            self._asked = room
        return body

    def _room(self):
        """How many tasks fewer than it may hold (its slots, then its depth) it holds: a
        full worker's request (the start of the task that took a freed slot) asks for
        nothing, which the server would only have counted to find."""
        return self.concurrency + self.depth - len(self.running) - len(self.queue)

    def _acknowledged(self, sent, news, answer):
        """The server has these reports: forget them, and take the tasks its answer brings."""
        del self.reports[:len(sent)]
        if self._news == news:
            self._news = None
        for r in answer["refused"]:
            log.warning("server refused report on execution %s: %s", r["execution_id"], r["error"])
        for r in sent:
            if r["status"] in FINAL:
                self.held.discard(r["execution_id"])
                self.signaled.pop(r["execution_id"], None)
        if self._asked and self.prefetch is None:
            self._backlog = len(answer.get("assignments") or ()) >= self._asked
        if answer.get("assignments"):
            self._take(answer["assignments"])
            self._start_ready()

    async def _flush_reports(self):
        """Wait until the server has every report, unless told twice to stop."""
        self._reports_ready.set()
        while (self.reports or self._news) and not self._stop_now:
            await asyncio.sleep(0.05)
        if self.reports:
            log.error("exiting with %d report(s) the server never acknowledged: %s",
                      len(self.reports), self.reports[:20])

    def stats(self):
        disk = shutil.disk_usage(self.workdir)
        return {"load": round(os.getloadavg()[0], 2), "memory": memory_percent(),
                "disk": round(100 * (1 - disk.free / disk.total), 1)}


def memory_percent():
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        total = int(info["MemTotal"].split()[0])
        available = int(info["MemAvailable"].split()[0])
        return round(100 * (1 - available / total), 1)
    except (OSError, KeyError, ValueError):
        return None
