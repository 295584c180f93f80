"""A recruitment simulation: the real reconciler on a real database, with fake clouds, a fake
clock, and workers that are rows (they register when their host is up and do work when told).
Used by tests/test_recruit_sim.py and bench/recruit.py."""
import logging
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, select, update

from fakes.cloud import FakeProviders
from scitq.errors import ScitqError
from scitq.server.recruit.reconciler import Reconciler
from scitq.server.db import Database
from scitq.server.models import Batch, Instance, Job, Recruiter, Task, Worker
from scitq.status import LIVE_HOSTS, HostStatus, JobStatus, TaskStatus, WorkerStatus

log = logging.getLogger(__name__)


class Clock:
    def __init__(self):
        self.t = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self):
        return self.t

    def advance(self, seconds):
        self.t += timedelta(seconds=seconds)


class Sim:
    def __init__(self, db_url, data_dir, clouds, **settings):
        self.db = Database(db_url)
        self.db.migrate()
        self.clock = Clock()
        self.clouds = clouds
        # The deploy jobs it queues are never run: register() plays the workers.
        settings.setdefault("server_url", lambda provider: "http://sim.invalid:5000")
        self.rec = Reconciler(self.db, FakeProviders(clouds, data_dir), clock=self.clock, **settings)
        self.ticks = []          # seconds each reconcile() took

    def close(self):
        self.db.dispose()

    # -- the state ------------------------------------------------------------------
    def batch(self, name, tasks=0):
        with self.db.write() as s:
            b = Batch(name=name)
            s.add(b)
            s.flush()
            if tasks:
                self.add_tasks(s, b.id, tasks)
            return b.id

    def add_tasks(self, s, batch_id, n):
        now = self.clock()
        rows = [{"batch_id": batch_id, "command": "true", "status": TaskStatus.PENDING.value,
                 "attempt": 0, "created_at": now, "updated_at": now} for _ in range(n)]
        for i in range(0, n, 20_000):
            s.execute(insert(Task), rows[i:i + 20_000])

    def recruiter(self, batch_id, **fields):
        spec = {"provider": "fake", "max_workers": 3, "tasks_per_worker": 10, "concurrency": 2,
                "prefetch": 0, "idle_timeout": 120.0, "rank": 0, "gpu": False, "spot": False,
                **fields}
        if "flavor" not in spec and "min_cpu" not in spec:
            spec["min_cpu"] = 1
        with self.db.write() as s:
            r = Recruiter(batch_id=batch_id, created_at=self.clock(), **spec)
            s.add(r)
            s.flush()
            return r.id

    def instances(self, live_only=True):
        with self.db.read() as s:
            q = select(Instance).order_by(Instance.id)
            if live_only:
                q = q.where(Instance.status.in_(LIVE_HOSTS))
            return s.scalars(q).all()

    # -- what workers do -------------------------------------------------------------
    def register(self):
        """Hosts that are up get their worker (deploys take no time here)."""
        with self.db.write() as s:
            ready = s.execute(select(Instance.name, Instance.batch_id, Instance.recruiter_id)
                              .outerjoin(Worker, Worker.name == Instance.name)
                              .where(Instance.status == HostStatus.DEPLOYING.value,
                                     Worker.id.is_(None))).all()
            conc = dict(s.execute(select(Recruiter.id, Recruiter.concurrency)).all())
            if ready:
                s.execute(insert(Worker), [
                    {"name": name, "status": WorkerStatus.RUNNING.value, "concurrency": conc.get(rid, 1),
                     "prefetch": 0, "batch_id": bid, "last_seen": self.clock(),
                     "idle_since": self.clock(), "created_at": self.clock()}
                    for name, bid, rid in ready])
            return len(ready)

    def work(self, per_worker=1):
        """Each running worker finishes `per_worker` pending tasks of its batch; workers with
        nothing to do become idle (from now), the others busy."""
        done = 0
        now = self.clock()
        with self.db.write() as s:
            workers = s.execute(select(Worker.id, Worker.batch_id, Worker.idle_since)
                                .where(Worker.status == WorkerStatus.RUNNING.value)).all()
            by_batch = {}
            for wid, bid, idle in workers:
                by_batch.setdefault(bid, []).append((wid, idle))
            for bid, ws in by_batch.items():
                want = len(ws) * per_worker
                ids = s.scalars(select(Task.id).where(Task.batch_id == bid,
                                                      Task.status == TaskStatus.PENDING.value)
                                .order_by(Task.id).limit(want)).all()
                if ids:
                    s.execute(update(Task).where(Task.id.in_(ids))
                              .values(status=TaskStatus.SUCCEEDED.value)
                              .execution_options(synchronize_session=False))
                    done += len(ids)
                nbusy = -(-len(ids) // per_worker)
                busy = [w for w, _ in ws[:nbusy]]
                idle = [w for w, since in ws[nbusy:] if since is None]
                if busy:
                    s.execute(update(Worker).where(Worker.id.in_(busy)).values(idle_since=None)
                              .execution_options(synchronize_session=False))
                if idle:
                    s.execute(update(Worker).where(Worker.id.in_(idle)).values(idle_since=now)
                              .execution_options(synchronize_session=False))
        return done

    def run(self, per_worker=20, max_passes=1000):
        """Pass, register, work until every task is done and every host gone; returns
        (creates, deletes, peak live hosts)."""
        creates = deletes = peak = 0
        for _ in range(max_passes):
            plan = self.tick()
            creates += len(plan.create)
            deletes += len(plan.delete)
            self.register()
            live = len(self.instances())
            peak = max(peak, live)
            if not self.work(per_worker=per_worker) and live == 0:
                break
        return creates, deletes, peak

    # -- time -------------------------------------------------------------------------
    def tick(self, seconds=None):
        self.clock.advance(self.rec.tick if seconds is None else seconds)
        t0 = time.perf_counter()
        plan = self.rec.reconcile()
        self.ticks.append(time.perf_counter() - t0)
        self.run_jobs()
        return plan

    def run_jobs(self):
        """What the job runner does, off the loop's thread: each create and delete job queued
        so far, run once through the reconciler's own handlers, in order."""
        handlers = self.rec.handlers()
        with self.db.write() as s:
            jobs = s.execute(select(Job.id, Job.kind, Job.params).where(
                Job.status == JobStatus.PENDING.value, Job.kind.in_(list(handlers))).order_by(Job.id)).all()
            if jobs:
                s.execute(update(Job).where(Job.id.in_([j.id for j in jobs]))
                          .values(status=JobStatus.RUNNING.value))
        ended = {JobStatus.SUCCEEDED.value: [], JobStatus.FAILED.value: []}
        for job_id, kind, params in jobs:
            try:
                handlers[kind]({"id": job_id, "kind": kind, "params": params}, log.debug)
                ended[JobStatus.SUCCEEDED.value].append(job_id)
            except ScitqError as err:
                log.warning("recruitment: %s job %s failed: %s", kind, job_id, err)
                ended[JobStatus.FAILED.value].append(job_id)
        with self.db.write() as s:
            for status, ids in ended.items():
                if ids:
                    s.execute(update(Job).where(Job.id.in_(ids)).values(status=status))
