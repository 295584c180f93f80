"""Per-minute rollups for the UI's charts: what a chart reads is a few hundred rows of
minute_rollup, never the execution table, so it answers at once with a million tasks.

A pass (every TICK seconds, and once at start) counts the executions that ended since the
last minute rolled up, less LAG (an execution's ended_at is written a moment before its
transaction commits: those minutes are counted again, and the counts overwrite the old
ones), by batch, worker and minute, through the index on ended_at. It then samples the
slots busy (per batch: its tasks assigned or running, from the task counts; overall: the
workers' slots too) and the cost spent so far.
Passes of several server processes are serialized by an advisory lock on PostgreSQL and
give the same rows.
"""
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, literal_column, select

from scitq.server.recruit.ledger import cost_of
from scitq.server import dialect, task_store
from scitq.server.db import lock_in
from scitq.server.loop import Loop
from scitq.server.models import Batch, Execution, MinuteRollup, Task, utcnow
from scitq.server.ui import dashboard as dash
from scitq.status import ExecutionStatus, TaskStatus

TICK = 10.0                     # seconds between passes
LAG = timedelta(minutes=1)      # counted again at each pass: the minute before the last one
ALL = 0                         # the batch_id / worker_id of the rows over every batch / worker
GONE = -1                       # the worker_id of executions whose worker was deleted
MAX_MINUTES = 24 * 60           # the longest span a chart asks for
ROLLUP = MinuteRollup.__table__
ENDED = (ExecutionStatus.SUCCEEDED.value, ExecutionStatus.FAILED.value)
BUSY = (TaskStatus.ASSIGNED.value, TaskStatus.RUNNING.value)


def minute_of(dt):
    return dt.replace(second=0, microsecond=0)


class Rollups(Loop):
    name = "rollups"
    tick = TICK

    def __init__(self, db):
        super().__init__()
        self.db = db

    def start(self):
        self.wake()             # a first pass at once: charts are up to date after a restart
        super().start()

    def step(self):
        self.roll()

    def roll(self, now=None):
        """One pass: count what ended since the last minute rolled up, then sample."""
        now = now or utcnow()
        with self.db.write() as s:
            lock_in(s, "rollups")
            last = s.scalar(select(func.max(MinuteRollup.minute)))
            since = last - LAG if last is not None else s.scalar(select(func.min(Execution.ended_at)))
            if since is not None:
                _upsert(s, self._ended(s, minute_of(since)), ("succeeded", "failed"))
            _upsert(s, self._samples(s, minute_of(now), now), ("busy", "slots", "cost"))
            task_store.compact_counts(s)     # under the same lock: one compaction at a time

    def _ended(self, s, since):
        """Rows {batch_id, worker_id, minute, succeeded, failed} of the executions ended
        from `since` on, for each (batch, worker), each batch, and overall."""
        minute = dialect.truncate_to_minute(Execution.ended_at)
        worker = func.coalesce(Execution.worker_id, literal_column(str(GONE)))
        q = (select(Task.batch_id, worker, minute, Execution.status, func.count())
             .join(Task, Task.id == Execution.task_id)
             .where(Execution.ended_at >= since, Execution.status.in_(ENDED))
             .group_by(Task.batch_id, worker, minute, Execution.status))
        rows = {}
        for batch_id, worker_id, at, status, n in s.execute(q):
            at = aware(at)
            for key in ((batch_id, worker_id, at), (batch_id, ALL, at), (ALL, ALL, at)):
                row = rows.setdefault(key, {"batch_id": key[0], "worker_id": key[1],
                                            "minute": key[2], "succeeded": 0, "failed": 0})
                row[status] += n
        return list(rows.values())

    @staticmethod
    def _samples(s, minute, now):
        """This minute's samples: busy slots and cost per batch that runs something or
        pays for hosts, and overall (with the slots of the workers alive)."""
        ids = list(s.scalars(select(Batch.id)))
        counts = task_store.batch_counts(s)
        busy = {bid: sum(counts[bid][st] for st in BUSY) for bid in ids if bid in counts}
        costs = cost_of(s, batch_ids=ids, now=now)
        rows = [{"batch_id": bid, "worker_id": ALL, "minute": minute, "succeeded": 0, "failed": 0,
                 "busy": busy.get(bid, 0), "slots": None, "cost": costs[bid]["spent"]}
                for bid in ids if busy.get(bid) or costs[bid]["hosts"]]
        workers = dash.workers_summary(s, counts)
        total = dash.total_cost(costs)
        rows.append({"batch_id": ALL, "worker_id": ALL, "minute": minute, "succeeded": 0,
                     "failed": 0, "busy": workers["busy"], "slots": workers["slots"],
                     "cost": total["spent"]})
        return rows


def aware(at):
    """A minute as the database gives it back: SQLite's strftime gives text."""
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def _upsert(s, rows, columns):
    """Insert the rows, or set these columns of those that exist."""
    if not rows:
        return
    s.execute(dialect.upsert(s, ROLLUP, ("batch_id", "worker_id", "minute"), columns), rows)


def chart(s, batch_id=ALL, minutes=60, now=None):
    """The series of one batch (or overall, batch 0) over the last `minutes`: one point per
    minute from its first row in that span to its last (none when it has none)."""
    minutes = max(1, min(int(minutes), MAX_MINUTES))
    now = now or utcnow()
    since = minute_of(now) - timedelta(minutes=minutes - 1)
    rows = s.execute(select(MinuteRollup.minute, MinuteRollup.succeeded, MinuteRollup.failed,
                            MinuteRollup.busy, MinuteRollup.slots, MinuteRollup.cost)
                     .where(MinuteRollup.batch_id == batch_id, MinuteRollup.worker_id == ALL,
                            MinuteRollup.minute >= since)
                     .order_by(MinuteRollup.minute)).all()
    out = {"minutes": [], "succeeded": [], "failed": [], "busy": [], "free": [], "cost": []}
    if not rows:
        return out
    by_minute = {int(aware(r.minute).timestamp()): r for r in rows}
    first, last = min(by_minute), max(by_minute)
    out["minutes"] = list(range(first, last + 60, 60))
    for at in out["minutes"]:
        r = by_minute.get(at)
        if r is None:
            for key, empty in (("succeeded", 0), ("failed", 0), ("busy", None), ("free", None),
                               ("cost", None)):
                out[key].append(empty)
            continue
        out["succeeded"].append(r.succeeded)
        out["failed"].append(r.failed)
        out["busy"].append(r.busy)
        known = r.slots is not None and r.busy is not None
        out["free"].append(max(r.slots - r.busy, 0) if known else None)
        out["cost"].append(r.cost)
    return out


def worker_counts(s, worker_ids):
    """{worker id: {"succeeded": n, "failed": n}} from the rollups (as of the last pass)."""
    out = {wid: {"succeeded": 0, "failed": 0} for wid in worker_ids}
    if not worker_ids:
        return out
    q = (select(MinuteRollup.worker_id, func.sum(MinuteRollup.succeeded), func.sum(MinuteRollup.failed))
         .where(MinuteRollup.worker_id.in_(list(worker_ids)), MinuteRollup.batch_id != ALL)
         .group_by(MinuteRollup.worker_id))
    for wid, ok, ko in s.execute(q):
        out[wid] = {"succeeded": int(ok or 0), "failed": int(ko or 0)}
    return out
