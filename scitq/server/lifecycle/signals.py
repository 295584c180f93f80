"""Signals to running executions (kill, pause, resume, a batch's stop), written set-based."""

from sqlalchemy import bindparam, func, select, update

from scitq.errors import BadRequest, Conflict
from scitq.server.db import add_events, event_row, record
from scitq.server.lifecycle.common import ACTIVE, EXECUTION, IDS, SIGNALS, TASK, expire_held
from scitq.server.lifecycle.moves import cancel
from scitq.server.models import Execution
from scitq.status import BatchStatus, ExecutionStatus, TaskStatus

LIVE_OF_TASK = select(EXECUTION.c.id, EXECUTION.c.status).where(
    EXECUTION.c.task_id == bindparam("task_id"), EXECUTION.c.status.in_(ACTIVE))
LIVE_OF_BATCH = (select(EXECUTION.c.id).join_from(EXECUTION, TASK, EXECUTION.c.task_id == TASK.c.id)
                 .where(TASK.c.batch_id == bindparam("batch_id"), EXECUTION.c.status.in_(bindparam("statuses", expanding=True)),
                        EXECUTION.c.paused.in_(bindparam("paused", expanding=True))))
SIGNALED = (update(EXECUTION).where(EXECUTION.c.id.in_(IDS))
            .values(signal=bindparam("sig"), signal_seq=func.coalesce(EXECUTION.c.signal_seq, 0) + 1)
            .returning(EXECUTION.c.id, EXECUTION.c.signal_seq, EXECUTION.c.worker_id))


def _signal(s, execution_ids, sig):
    """Ask the executions' workers to apply `sig` (delivered with their next poll answer):
    one UPDATE, their events by one insert; returns the workers to wake."""
    if not execution_ids:
        return set()
    s.flush()
    expire_held(s, Execution, set(execution_ids))
    rows = s.connection().execute(SIGNALED, {"ids": list(execution_ids), "sig": sig}).all()
    add_events(s, [event_row("execution.signal", "execution", eid, {"signal": sig, "seq": seq})
                   for eid, seq, _ in sorted(rows)])
    return {wid for _, _, wid in rows}


def signal_task(s, task, sig):
    """kill, pause or resume a task; returns the worker to wake (None if none is involved).

    Killing a task that has not started cancels it (and what waits for it); killing a
    running one fails it for good, without retry."""
    if sig not in SIGNALS:
        raise BadRequest(f"unknown signal {sig!r}: one of {', '.join(SIGNALS)}")
    if sig == "kill" and task.status in (TaskStatus.WAITING.value, TaskStatus.PENDING.value):
        cancel(s, task, "killed by user before it started")
        return None
    ex = s.connection().execute(LIVE_OF_TASK, {"task_id": task.id}).first()
    if ex is None:
        raise Conflict(f"task {task.id} is {task.status}: there is nothing to {sig}")
    if sig != "kill" and ex.status != ExecutionStatus.RUNNING.value:
        raise Conflict(f"task {task.id} is {task.status}: only a running task can be {sig}d")
    return _signal(s, [ex.id], sig).pop()


def _live_of_batch(s, batch, statuses=ACTIVE, paused=(False, True)):
    return s.connection().execute(LIVE_OF_BATCH, {"batch_id": batch.id, "statuses": list(statuses),
                                                  "paused": list(paused)}).scalars().all()


def stop_batch(s, batch, requeue):
    """Hold the batch and kill what it runs; the killed tasks go back to pending (requeue)
    or fail for good. Returns the workers to wake."""
    if batch.status != BatchStatus.PAUSED.value:
        batch.status = BatchStatus.PAUSED.value
    record(s, "batch.stopped", batch, requeue=requeue)
    return _signal(s, _live_of_batch(s, batch), "requeue" if requeue else "kill")


def signal_batch(s, batch, sig):
    """Pause or resume (SIGSTOP / SIGCONT) every running task of the batch."""
    return _signal(s, _live_of_batch(s, batch, (ExecutionStatus.RUNNING.value,), (sig != "pause",)), sig)
