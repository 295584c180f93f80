"""What the UI's live views need that the REST API does not give in one compact answer:
the dashboard (batch counts, throughput, ETA, workers and cost in one compact JSON),
and relaunching every failed task of a batch in one request."""
from datetime import timedelta

from sqlalchemy import func, select

from scitq.server.recruit.ledger import cost_of
from scitq.server import lifecycle, task_store
from scitq.server.models import (Batch, Execution, MinuteRollup, Task, TaskDependency, Worker,
                                 iso, utcnow)
from scitq.status import BatchStatus, ExecutionStatus, TaskStatus, WorkerStatus

WINDOW = 300.0      # seconds of ended executions the throughput is measured over
MIN_SPAN = 10.0     # a burst of quick tasks is not read as thousands per minute
RELAUNCH_CHUNK = 5000  # failed tasks relaunched by one statement (SQLite bounds its parameters)


def per_minute(n, span):
    """n ended over `span` seconds, as tasks per minute (span bounded to MIN_SPAN..WINDOW)."""
    return round(n * 60.0 / min(max(span, MIN_SPAN), WINDOW), 2)


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
        out[batch_id] = per_minute(n, (now - first).total_seconds() if first is not None else WINDOW)
    return out


def rolled_throughputs(s, now, batch_ids):
    """throughputs() of these batches from the per-minute rollups (as of their last pass, at
    most rollups.TICK seconds ago, from the start of the first minute with an end): a few rows
    per batch by their primary key, for the dashboard, which is polled every 2 s and must not
    count the window's executions (50,000 of them for a batch running at 170 tasks/s)."""
    from scitq.server import rollups        # which imports this module
    since = rollups.minute_of(now) - timedelta(seconds=WINDOW - 60)   # span <= WINDOW
    ended = MinuteRollup.succeeded + MinuteRollup.failed
    q = (select(MinuteRollup.batch_id, func.sum(ended), func.min(MinuteRollup.minute))
         .where(MinuteRollup.batch_id.in_(list(batch_ids)), MinuteRollup.worker_id == rollups.ALL,
                MinuteRollup.minute >= since, ended > 0)
         .group_by(MinuteRollup.batch_id))
    return {batch_id: per_minute(n, (now - rollups.aware(first)).total_seconds())
            for batch_id, n, first in s.execute(q)}


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
    batches = s.execute(select(Batch.id, Batch.name, Batch.status, Batch.concurrency,
                               Batch.created_at).order_by(Batch.id)).all()
    counts = task_store.batch_counts(s)
    rates = rolled_throughputs(s, now, [b.id for b in batches])
    costs = cost_of(s, batch_ids=[b.id for b in batches], now=now)
    rows = []
    for b in batches:
        c = counts.get(b.id) or task_store.summarize({})
        rate = rates.get(b.id, 0.0)
        cost = costs.get(b.id)
        rows.append({"id": b.id, "name": b.name, "status": BatchStatus.shown(b.status, c),
                     "concurrency": b.concurrency, "counts": c, "throughput": rate,
                     "eta": eta(c, rate, b.status),
                     # Only batches that rented hosts carry a cost: most never do.
                     "cost": cost if cost and (cost["spent"] or cost["hosts"]) else None})
    return {"now": now.isoformat(), "window": WINDOW, "batches": rows,
            "workflows": workflows(s, batches), "workers": workers_summary(s, counts),
            "cost": total_cost(costs)}


# (database, batch id, its creation) -> ids of the batches its tasks wait for (fixed at
# submission; SQLite may give a deleted batch's id to a new one, hence the creation time).
_STEP_DEPS = {}


def workflows(s, batches):
    """[{name, steps: [{id, name, step, depends_on: [step]}]}]: batches named
    "<workflow>.<step>" (as scitq.workflow names them), two or more to a workflow.

    A step's dependencies are those of one of its tasks (a step's iterations are alike),
    read once by the primary keys and kept: a workflow's steps are submitted whole, in
    dependency order."""
    groups = {}
    for b in batches:
        workflow, dot, step = b.name.partition(".")
        if dot and workflow and step:
            groups.setdefault(workflow, []).append((b, step))
    out = []
    for name, members in groups.items():
        if len(members) < 2:
            continue
        step_of = {b.id: step for b, step in members}
        steps = [{"id": b.id, "name": b.name, "step": step,
                  "depends_on": [step_of[d] for d in _step_deps(s, b) if d in step_of]}
                 for b, step in members]
        out.append({"name": name, "steps": steps})
    return out


def _step_deps(s, batch):
    key = (str(s.get_bind().url), batch.id, batch.created_at)
    if key in _STEP_DEPS:
        return _STEP_DEPS[key]
    batch_id = batch.id
    task_id = s.scalar(select(Task.id).where(Task.batch_id == batch_id).limit(1))
    if task_id is None:
        return []
    deps = sorted(s.scalars(select(Task.batch_id).distinct()
                            .join(TaskDependency, TaskDependency.depends_on_id == Task.id)
                            .where(TaskDependency.task_id == task_id, Task.batch_id != batch_id)))
    if len(_STEP_DEPS) > 10_000:
        _STEP_DEPS.clear()
    _STEP_DEPS[key] = deps
    return deps


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


def latest_runs(s, task_ids):
    """{task id: {worker, started_at, ended_at, attempts}} of each task's latest execution
    (one query on the task_id index, for a page of tasks)."""
    out = {}
    if not task_ids:
        return out
    q = (select(Execution.task_id, Execution.worker_name, Execution.started_at, Execution.ended_at)
         .where(Execution.task_id.in_(task_ids)).order_by(Execution.id))
    for task_id, worker, started, ended in s.execute(q):
        out[task_id] = {"worker": worker, "started_at": iso(started), "ended_at": iso(ended),
                        "executions": out.get(task_id, {}).get("executions", 0) + 1}
    return out


CURRENT_SHOWN = 20      # tasks listed per worker (a worker runs a handful at once)


def current_tasks(s, worker_ids):
    """{worker id: [{task_id, name, status}]} of its live executions, by the (worker_id,
    status) index."""
    out = {wid: [] for wid in worker_ids}
    if not worker_ids:
        return out
    q = (select(Execution.worker_id, Execution.task_id, Task.name, Execution.status)
         .join(Task, Task.id == Execution.task_id)
         .where(Execution.worker_id.in_(worker_ids),
                Execution.status.in_([ExecutionStatus.ASSIGNED.value, ExecutionStatus.RUNNING.value]))
         .order_by(Execution.id))
    for wid, task_id, name, status in s.execute(q):
        if len(out[wid]) < CURRENT_SHOWN:
            out[wid].append({"task_id": task_id, "name": name, "status": status})
    return out


def relaunch_failed(s, batch):
    """Put every failed task of the batch back in the queue (as the API's relaunch does one
    by one, in one transaction: all or none); returns how many."""
    ids = s.scalars(select(Task.id).where(Task.batch_id == batch.id,
                                          Task.status == TaskStatus.FAILED.value)
                    .order_by(Task.id)).all()
    for i in range(0, len(ids), RELAUNCH_CHUNK):
        lifecycle.relaunch(s, ids[i:i + RELAUNCH_CHUNK])
    return len(ids)
