"""What the UI's live views need that the REST API does not give in one compact answer:
the dashboard (batch counts, throughput, ETA, workers and cost in one GROUP BY-based JSON),
and relaunching every failed task of a batch in one request."""
from datetime import timedelta

from sqlalchemy import func, select

from scitq.recruit.rules import cost_of
from scitq.server import queue
from scitq.server.models import Batch, Execution, Task, Worker, utcnow
from scitq.status import BatchStatus, ExecutionStatus, TaskStatus, WorkerStatus

WINDOW = 300.0      # seconds of ended executions the throughput is measured over
MIN_SPAN = 10.0     # a burst of quick tasks is not read as thousands per minute
RELAUNCH_CHUNK = 500   # failed tasks loaded at once by relaunch_failed (bounded memory)


def throughputs(s, now):
    """{batch_id: tasks ended per minute} over the last WINDOW seconds.

    Measured over the time those executions actually span (from the first one's start), so
    a batch that began a minute ago is not averaged over five. With no index on ended_at this
    scans the execution table once; the join reaches task only for the recent rows."""
    since = now - timedelta(seconds=WINDOW)
    start = func.min(func.coalesce(Execution.started_at, Execution.assigned_at))
    q = (select(Task.batch_id, func.count(), start)
         .join(Task, Task.id == Execution.task_id)
         .where(Execution.ended_at >= since,
                Execution.status.in_([ExecutionStatus.SUCCEEDED.value,
                                      ExecutionStatus.FAILED.value]))
         .group_by(Task.batch_id))
    out = {}
    for batch_id, n, first in s.execute(q):
        span = (now - first).total_seconds() if first is not None else WINDOW
        out[batch_id] = round(n * 60.0 / min(max(span, MIN_SPAN), WINDOW), 2)
    return out


def eta(counts, rate, status):
    """Seconds until nothing remains at the current rate; None when it cannot be told."""
    if not counts["remaining"]:
        return 0
    if not rate or status == BatchStatus.PAUSED.value:
        return None
    return round(counts["remaining"] / rate * 60.0)


def dashboard(s):
    """Everything the dashboard draws, and nothing else (it is polled every 2 s)."""
    now = utcnow()
    batches = s.execute(select(Batch.id, Batch.name, Batch.status, Batch.concurrency)
                        .order_by(Batch.id)).all()
    counts = queue.batch_counts(s)
    rates = throughputs(s, now)
    costs = cost_of(s, batch_ids=[b.id for b in batches], now=now)
    rows = []
    for b in batches:
        c = counts.get(b.id) or queue.summarize({})
        rate = rates.get(b.id, 0.0)
        cost = costs.get(b.id)
        rows.append({"id": b.id, "name": b.name, "status": BatchStatus.shown(b.status, c),
                     "concurrency": b.concurrency, "counts": c, "throughput": rate,
                     "eta": eta(c, rate, b.status),
                     # Only batches that rented hosts carry a cost: most never do.
                     "cost": cost if cost and (cost["spent"] or cost["hosts"]) else None})
    return {"now": now.isoformat(), "window": WINDOW, "batches": rows,
            "workers": workers_summary(s, counts), "cost": total_cost(costs)}


def workers_summary(s, counts):
    """Workers by status, and busy slots over the slots of the workers still alive.

    Busy slots are the tasks assigned or running, read from the batch counts already made:
    counting active executions instead would scan the execution table a second time."""
    by_status, slots = {}, 0
    alive = (WorkerStatus.RUNNING.value, WorkerStatus.PAUSED.value, WorkerStatus.DRAINING.value)
    for status, n, concurrency in s.execute(select(Worker.status, func.count(),
                                                   func.sum(Worker.concurrency))
                                            .group_by(Worker.status)):
        by_status[status] = n
        if status in alive:
            slots += concurrency or 0
    busy = sum(c["assigned"] + c["running"] for c in counts.values())
    return {"by_status": by_status, "slots": slots, "busy": busy}


def total_cost(costs):
    spent = sum(c["spent"] for c in costs.values())
    hourly = sum(c["hourly"] for c in costs.values())
    return {"spent": round(spent, 6), "hourly": round(hourly, 6),
            "hosts": sum(c["hosts"] for c in costs.values())}


def relaunch_failed(s, batch):
    """Put every failed task of the batch back in the queue (as the API's relaunch does one
    by one, in one transaction: all or none); returns how many."""
    ids = s.scalars(select(Task.id).where(Task.batch_id == batch.id,
                                          Task.status == TaskStatus.FAILED.value)
                    .order_by(Task.id)).all()
    for i in range(0, len(ids), RELAUNCH_CHUNK):
        chunk = ids[i:i + RELAUNCH_CHUNK]
        for task in s.scalars(select(Task).where(Task.id.in_(chunk)).order_by(Task.id)):
            queue.relaunch_task(s, task)
        s.flush()
        s.expunge_all()     # 100,000 relaunched tasks must not all stay in the session
    return len(ids)
