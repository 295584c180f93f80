"""Jobs: deploys and teardowns of hosts, run in the background, retried by policy.

A job is a row (kind, target, params, status, attempts) and a log file. The runner thread
claims due jobs, runs up to `slots` at once, and on failure puts a job back with a growing
delay until its attempts are spent. A job that was running when the server died is taken
up again at start.
"""
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import or_, select, update

from scitq.deploy import check_host
from scitq.errors import BadRequest, Conflict, ScitqError
from scitq.log import redact
from scitq.server.db import lock_in, record
from scitq.server.loop import Loop
from scitq.server.models import Job, utcnow
from scitq.status import JobStatus

log = logging.getLogger(__name__)

KINDS = ("deploy", "teardown", "create", "delete")   # the last two: recruitment's hosts


def create_jobs(s, kind, hosts, params, max_attempts=3):
    if kind not in KINDS:
        raise BadRequest(f"unknown job kind {kind!r}")
    if not hosts:
        raise BadRequest("no host given")
    jobs = []
    for host in hosts:
        check_host(host, params.get("user", "root"))
        job = Job(kind=kind, target=host, params=params, max_attempts=max_attempts,
                  status=JobStatus.PENDING.value)
        s.add(job)
        s.flush()
        record(s, f"job.{kind}", job, target=host)
        jobs.append(job)
    return jobs


def retry_job(s, job):
    """A failed job gets a fresh set of attempts; its log keeps the earlier ones, and
    earlier_attempts counts them."""
    if job.status != JobStatus.FAILED.value:
        raise Conflict(f"job {job.id} is {job.status}: only a failed job can be retried")
    job.status = JobStatus.PENDING.value
    job.earlier_attempts += job.attempts
    job.attempts = 0
    job.next_try_at = utcnow()
    record(s, "job.retried", job)
    return job


class JobRunner(Loop):
    name = "jobs"
    tick = 1.0          # seconds between looks for due jobs
    slots = 4           # jobs run at once
    backoff = 30.0      # seconds before a second attempt; doubled for each further one
    orphan_after = 60.0  # seconds a job runs before another server may find its runner gone

    def __init__(self, db, logs, handlers, backoff=None):
        super().__init__()
        self.db = db
        self.logs = logs
        self.handlers = handlers      # kind -> f(job_dict, log_line) raising on failure
        if backoff is not None:
            self.backoff = backoff
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="scitq-job")
        self._running = set()
        self._lock = threading.Lock()
        self._took_back = 0.0

    def start(self):
        if self.db.is_sqlite:   # one server process: what it ran before it died is due again
            with self.db.write() as s:
                s.execute(update(Job).where(Job.status == JobStatus.RUNNING.value)
                          .values(status=JobStatus.PENDING.value, next_try_at=utcnow()))
        else:
            self.take_back()
        super().start()

    def stop(self):
        super().stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def step(self):
        self.run_due()
        if not self.db.is_sqlite and time.monotonic() - self._took_back >= self.orphan_after:
            self.take_back()

    def take_back(self):
        """PostgreSQL: jobs running for `orphan_after` seconds (or never started) whose
        server process holds no lock on them (it died; PostgreSQL released its locks) are
        due again; the jobs other live servers run are theirs. Returns their ids."""
        self._took_back = time.monotonic()
        cutoff = utcnow() - timedelta(seconds=self.orphan_after)
        with self.db.read() as s:
            ids = s.scalars(select(Job.id).where(
                Job.status == JobStatus.RUNNING.value,
                or_(Job.started_at.is_(None), Job.started_at < cutoff))).all()
        with self._lock:
            ids = [i for i in ids if i not in self._running]
        out = []
        for jid in ids:
            with self.db.once("job", wait=False, item=jid) as orphan:
                if orphan:
                    with self.db.write() as s:
                        s.execute(update(Job).where(Job.id == jid, Job.status == JobStatus.RUNNING.value)
                                  .values(status=JobStatus.PENDING.value, next_try_at=utcnow()))
                    out.append(jid)
        if out:
            log.warning("jobs %s were left running by a server that is gone: due again", out)
        return out

    def run_due(self):
        """Start the due jobs there is room for; returns their ids."""
        with self._lock:
            free = self.slots - len(self._running)
        if free <= 0:
            return []
        with self.db.write() as s:
            if not lock_in(s, "jobs", wait=False):     # another server process claims now
                return []
            jobs = s.scalars(select(Job).where(Job.status == JobStatus.PENDING.value,
                                               Job.next_try_at <= utcnow())
                             .order_by(Job.next_try_at, Job.id).limit(free)
                             .with_for_update(skip_locked=True)).all()
            for job in jobs:
                job.status = JobStatus.RUNNING.value
                job.attempts += 1
                job.started_at = utcnow()
            claimed = [job.to_dict() for job in jobs]
        for job in claimed:
            with self._lock:
                self._running.add(job["id"])
            self._pool.submit(self._execute, job)
        return [j["id"] for j in claimed]

    def line(self, job_id, text):
        """Append a line to a job's log."""
        self.logs.extend(job_id, "log", (redact(text).rstrip("\n") + "\n").encode(errors="replace"))

    def _execute(self, job):
        try:
            # Held until the job's end is written: other servers then know it is not an orphan.
            with self.db.once("job", item=job["id"]):
                self._run_one(job)
        finally:
            with self._lock:
                self._running.discard(job["id"])

    def _run_one(self, job):
        jid = job["id"]
        self.line(jid, f"=== attempt {job['attempts']} of {job['max_attempts']}: "
                       f"{job['kind']} {job['target']} ({utcnow().isoformat(timespec='seconds')})")
        error = None
        try:
            self.handlers[job["kind"]](job, lambda text: self.line(jid, text))
        except ScitqError as err:
            error = redact(err.message)
        except Exception as err:     # a bug in a handler: keep the traceback in the job's log
            self.line(jid, traceback.format_exc())
            error = redact(f"{type(err).__name__}: {err}")
        self._finish(job, error)
        self._wake.set()

    def _finish(self, job, error):
        with self.db.write() as s:
            row = s.get(Job, job["id"])
            if row is None:
                return
            now = utcnow()
            if error is None:
                row.status, row.error, row.ended_at = JobStatus.SUCCEEDED.value, None, now
                self.line(row.id, "=== succeeded")
            elif row.attempts < row.max_attempts:
                delay = self.backoff * 2 ** (row.attempts - 1)
                row.status, row.error = JobStatus.PENDING.value, error[:1024]
                row.next_try_at = now + timedelta(seconds=delay)
                self.line(row.id, f"=== failed: {error}\n=== next attempt in {delay:.0f} s")
            else:
                row.status, row.error, row.ended_at = JobStatus.FAILED.value, error[:1024], now
                self.line(row.id, f"=== failed: {error}\n=== no attempt left")
            record(s, f"job.{row.status}", row, attempts=row.attempts, error=row.error)
