"""How a task moves on once something happened to it: retries, the dependency DAG, signals.

Every function here changes rows of the caller's transaction and records one event per
change; nothing commits. The lifecycle itself is in DESIGN.md section 2:
waiting -> pending -> assigned -> running -> succeeded | failed, with canceled for tasks
whose dependency failed for good (or that a user killed before they ran).
"""
from datetime import timedelta

from sqlalchemy import bindparam, case, exists, func, select, update

from scitq.errors import BadRequest, Conflict
from scitq.server.db import add_events, among, event_row, record
from scitq.server.models import Execution, Task, TaskDependency, utcnow
from scitq.status import BatchStatus, ExecutionStatus, TaskStatus

SIGNALS = ("kill", "pause", "resume")
ACTIVE = (ExecutionStatus.ASSIGNED.value, ExecutionStatus.RUNNING.value)
DEPENDENCY = "dependency "     # how the reason of a task canceled by its DAG begins


def _dependents(task_ids):
    return select(TaskDependency.task_id).where(TaskDependency.depends_on_id.in_(task_ids))


# --- ends of attempts ---------------------------------------------------------

TASK, EXECUTION = Task.__table__, Execution.__table__
# What deciding an attempt's end reads of its task: plain columns, selected with the execution.
ATTEMPT_FIELDS = ("attempt", "retries", "retry_delay", "retry_backoff")
_ids = bindparam("ids", expanding=True)
_now = bindparam("now")
TASKS_STARTED = (update(TASK).where(TASK.c.id.in_(_ids))
                 .values(status=TaskStatus.RUNNING.value, updated_at=_now))
TASKS_SUCCEEDED = (update(TASK).where(TASK.c.id.in_(_ids))
                   .values(status=TaskStatus.SUCCEEDED.value, reason=None, not_before=None, updated_at=_now)
                   .returning(TASK.c.id, exists().where(TaskDependency.__table__.c.depends_on_id == TASK.c.id)))
TASK_RETRIED = (update(TASK).where(TASK.c.id == bindparam("_id"))
                .values(status=TaskStatus.PENDING.value, not_before=bindparam("not_before"),
                        reason=bindparam("reason"), updated_at=_now))
TASK_FAILED = (update(TASK).where(TASK.c.id == bindparam("_id"))
               .values(status=TaskStatus.FAILED.value, reason=bindparam("reason"), updated_at=_now))
# An attempt that was not the task's fault is given back; the reason changes only when one is given.
TASK_GIVEN_BACK = (update(TASK).where(TASK.c.id == bindparam("_id"))
                   .values(status=TaskStatus.PENDING.value, updated_at=_now,
                           attempt=case((TASK.c.attempt > 0, TASK.c.attempt - 1), else_=0),
                           reason=func.coalesce(bindparam("reason"), TASK.c.reason)))


class Moves:
    """How the tasks of ended (or started) attempts move on, decided on plain rows and written
    set-based: one statement per target status, their events (in order with the execution
    events the caller adds) by one insert. Every end of an attempt goes through here: a
    worker's reports, a lost worker's executions, a deleted host's."""

    def __init__(self):
        self.events = []        # event_row dicts, in order: the caller's and these
        self.tasks = {}         # task id -> (what happens to it, its values): the last word holds

    def event(self, kind, object_type, object_id, **detail):
        self.events.append(event_row(kind, object_type, object_id, detail))

    def start(self, task_id):
        self.tasks[task_id] = ("started", None)

    def succeed(self, task_id):
        self.tasks[task_id] = ("succeeded", None)

    def fail(self, task, error, retry=True):
        """An attempt of `task` (a row with its id and ATTEMPT_FIELDS) failed: it is tried
        again after its delay while retries are left, else it fails for good and what waits
        for it is canceled. Returns True when it will be retried."""
        if retry and task["attempt"] <= task["retries"]:
            delay = task["retry_delay"] * task["retry_backoff"] ** max(task["attempt"] - 1, 0)
            not_before = utcnow() + timedelta(seconds=delay) if delay > 0 else None
            self.tasks[task["id"]] = ("retried", {"not_before": not_before,
                                                  "reason": f"attempt {task['attempt']} failed: {error}"[:1024]})
            self.event("task.retrying", "task", task["id"], attempt=task["attempt"],
                       retries=task["retries"], delay=delay)
            return True
        self.tasks[task["id"]] = ("failed", {"reason": (error or "failed")[:1024]})
        return False

    def give_back(self, task_id, why=None):
        """The attempt ended through no fault of the task (its worker was lost, it was
        released unstarted, a user stopped it to run it again, `why`): pending again, the
        attempt given back."""
        self.tasks[task_id] = ("given_back", {"reason": why})
        if why:
            self.event("task.requeued", "task", task_id, reason=why)

    def write(self, s):
        """Write the events and the tasks' changes in the caller's transaction."""
        s.flush()       # what the session changed counts (Core statements do not autoflush)
        add_events(s, self.events)
        self.events = []
        by_kind = {}
        for tid, (kind, values) in sorted(self.tasks.items()):
            by_kind.setdefault(kind, []).append({"_id": tid, **(values or {})})
        self.tasks = {}
        if not by_kind:
            return
        conn, now = s.connection(), utcnow()
        _expire(s, Task, {row["_id"] for rows in by_kind.values() for row in rows})
        if "started" in by_kind:
            conn.execute(TASKS_STARTED, {"ids": [r["_id"] for r in by_kind["started"]], "now": now})
        for kind, statement in (("retried", TASK_RETRIED), ("given_back", TASK_GIVEN_BACK),
                                ("failed", TASK_FAILED)):
            if kind in by_kind:
                conn.execute(statement, [{**row, "now": now} for row in by_kind[kind]])
        for row in by_kind.get("failed", ()):
            cancel_dependents(s, [row["_id"]], f"{DEPENDENCY}{row['_id']} failed")
        if "succeeded" in by_kind:
            rows = conn.execute(TASKS_SUCCEEDED, {"ids": [r["_id"] for r in by_kind["succeeded"]], "now": now})
            waited_for = [tid for tid, has_dependents in rows if has_dependents]
            if waited_for:      # what waits for them is released once for all
                _make_ready(s, READY_DEPENDENTS, waited_for)


def _expire(s, model, ids):
    """What the session holds of these rows is stale once a Core statement changed them."""
    for obj in list(s.identity_map.values()):
        if isinstance(obj, model) and obj.id in ids:
            s.expire(obj)


LOST_WITH_TASKS = (select(EXECUTION.c.id, EXECUTION.c.task_id, EXECUTION.c.signal,
                         *(TASK.c[c] for c in ATTEMPT_FIELDS))
                  .join_from(EXECUTION, TASK, EXECUTION.c.task_id == TASK.c.id)
                  .where(EXECUTION.c.worker_id == bindparam("worker_id"), EXECUTION.c.status.in_(ACTIVE))
                  .order_by(EXECUTION.c.id))
EXECUTIONS_LOST = (update(EXECUTION).where(EXECUTION.c.id.in_(_ids))
                   .values(status=ExecutionStatus.LOST.value, reason="lost", error=bindparam("error"),
                           ended_at=_now, signal=None))


def give_back(s, worker_id, reason):
    """Mark a worker's live executions lost and their tasks pending again (a lost attempt
    is not the task's fault: it does not count); returns how many. A task the user asked to
    kill does not come back: it fails for good."""
    s.flush()       # what the session changed of them counts (Core statements do not autoflush)
    conn = s.connection()
    lost = [dict(row._mapping) for row in conn.execute(LOST_WITH_TASKS, {"worker_id": worker_id})]
    if not lost:
        return 0
    now = utcnow()
    _expire(s, Execution, {ex["id"] for ex in lost})
    conn.execute(EXECUTIONS_LOST, {"ids": [ex["id"] for ex in lost], "error": reason, "now": now})
    moves = Moves()
    for ex in lost:
        moves.event("execution.lost", "execution", ex["id"], task_id=ex["task_id"], reason=reason)
        if ex["signal"] == "kill":
            moves.fail({**ex, "id": ex["task_id"]}, "killed by user (its worker was lost)", retry=False)
        else:
            moves.give_back(ex["task_id"])
    moves.write(s)
    return len(lost)


def cancel(s, task, reason):
    task.status = TaskStatus.CANCELED.value
    task.reason = reason[:1024]
    record(s, "task.canceled", task, reason=reason)
    cancel_dependents(s, [task.id], f"{DEPENDENCY}{task.id} was canceled")


# --- the DAG ------------------------------------------------------------------

def release_dependents(s, task_ids):
    """Waiting tasks whose every dependency has now succeeded become pending."""
    if s.connection().execute(_dependents(task_ids).limit(1)).first() is None:
        return      # most tasks have no dependents: no flush, no update for them
    _make_ready(s, READY_DEPENDENTS, task_ids)


def settle(s, tasks):
    """Those of these waiting tasks whose every dependency has succeeded become pending."""
    ids = [t.id for t in tasks if t.status == TaskStatus.WAITING.value]
    if ids:
        _make_ready(s, READY, ids)


def _ready(candidates):
    """UPDATE the waiting tasks among `candidates` (ids, or a query of them) that wait for nothing
    unfinished any more to pending, RETURNING their ids."""
    task, edge = Task.__table__, TaskDependency.__table__.alias("unmet_edge")
    dep = Task.__table__.alias("unmet_dep")
    unmet = (select(edge.c.task_id).join(dep, dep.c.id == edge.c.depends_on_id)
             .where(edge.c.task_id == task.c.id, dep.c.status != TaskStatus.SUCCEEDED.value))
    return (update(task).where(task.c.id.in_(candidates), task.c.status == TaskStatus.WAITING.value,
                               ~unmet.exists())
            .values(status=TaskStatus.PENDING.value, reason=None, updated_at=bindparam("now"))
            .returning(task.c.id))


READY = _ready(_ids)
READY_DEPENDENTS = _ready(_dependents(_ids))


def _make_ready(s, statement, ids):
    """One UPDATE and one insert of events for all the tasks made ready: a task with 5,000
    dependents released them one ORM object and one query each, in the request that
    reported its end (4.6 s)."""
    _set_tasks(s, statement, {"ids": list(ids)}, "task.ready")


def _set_tasks(s, statement, params, kind, detail=None):
    """Run a set UPDATE of tasks (RETURNING their ids), refresh what the session holds of
    them, and record their events by one insert. Returns the ids, ascending."""
    s.flush()       # statuses this session changed count (Core statements do not autoflush)
    now = utcnow()
    changed = sorted(s.connection().execute(statement, {**params, "now": now}).scalars())
    if not changed:
        return changed
    _expire(s, Task, set(changed))
    add_events(s, [event_row(kind, "task", tid, detail, now) for tid in changed])
    return changed


def _cascade(found, reason_like, **values):
    """UPDATE, to `values`, the tasks in status `found` (with a reason LIKE `reason_like`, if given)
    that wait for one of :ids, directly or through other such tasks, RETURNING their ids: one
    recursive query for the whole DAG below, whatever its size."""
    task = Task.__table__

    def matching(t):
        return [t.c.status == found] + ([t.c.reason.like(reason_like)] if reason_like else [])

    edge = TaskDependency.__table__.alias("first_edge")
    below = (select(edge.c.task_id.label("id")).where(edge.c.depends_on_id.in_(_ids))
             .cte("below", recursive=True))
    # From each dependent found, by its id, to its own dependents: only through those that
    # match, and in that order, which SQLite (row by row) and PostgreSQL both look up by index.
    edge, t = TaskDependency.__table__.alias("next_edge"), task.alias("through")
    below = below.union(select(edge.c.task_id).select_from(below)
                        .join(t, t.c.id == below.c.id).join(edge, edge.c.depends_on_id == below.c.id)
                        .where(*matching(t)))
    return (update(task).where(among(task.c.id, select(below.c.id)), *matching(task))
            .values(updated_at=bindparam("now"), **values).returning(task.c.id))


CANCEL_BELOW = _cascade(TaskStatus.WAITING.value, None, status=TaskStatus.CANCELED.value,
                        reason=bindparam("reason"))
REVIVE_BELOW = _cascade(TaskStatus.CANCELED.value, f"{DEPENDENCY}%", status=TaskStatus.WAITING.value,
                        reason=None)


def cancel_dependents(s, task_ids, reason):
    """Everything that waits, directly or not, for a task that will never succeed is
    canceled with the reason: nothing stays waiting forever."""
    _set_tasks(s, CANCEL_BELOW, {"ids": list(task_ids), "reason": reason}, "task.canceled",
               {"reason": reason})


def revive_dependents(s, task_ids):
    """A failed task is relaunched: what its failure canceled waits for it again."""
    _set_tasks(s, REVIVE_BELOW, {"ids": list(task_ids)}, "task.waiting")


FINISHED = (TaskStatus.SUCCEEDED.value, TaskStatus.FAILED.value, TaskStatus.CANCELED.value)
RELAUNCHED = (update(TASK).where(TASK.c.id.in_(_ids), TASK.c.status.in_(FINISHED))
              .values(status=TaskStatus.PENDING.value, reason=None, not_before=None, updated_at=_now))
STATUSES_OF = select(TASK.c.id, TASK.c.status).where(TASK.c.id.in_(_ids)).order_by(TASK.c.id)


def relaunch(s, task_ids):
    """Put finished tasks back in the queue (their past executions stay as history) and make
    what their failures canceled wait for them again: one UPDATE, one insert of events, one
    revival cascade. Refuses (409) a task that is not finished; returns the ids relaunched."""
    s.flush()
    conn = s.connection()
    previous = dict(conn.execute(STATUSES_OF.with_for_update(), {"ids": list(task_ids)}).all())
    for tid, status in previous.items():
        if status not in FINISHED:
            active = TaskStatus(status).is_active
            raise Conflict(f"task {tid} is {'' if active else 'already '}{status}"
                           + (": cannot relaunch it now" if active else ""))
    ids = sorted(previous)
    _expire(s, Task, set(ids))
    now = utcnow()
    conn.execute(RELAUNCHED, {"ids": ids, "now": now})
    add_events(s, [event_row("task.relaunched", "task", tid, {"previous": previous[tid]}, now) for tid in ids])
    revive_dependents(s, ids)
    return ids


def force(s, task):
    """Run a waiting or canceled task now, whatever its dependencies say."""
    if task.status not in (TaskStatus.WAITING.value, TaskStatus.CANCELED.value):
        raise Conflict(f"task {task.id} is {task.status}: only a waiting or canceled task can be "
                       "forced (relaunch a finished one)")
    previous = task.status
    task.status = TaskStatus.PENDING.value
    task.reason = f"forced while {previous}"
    task.not_before = None
    record(s, "task.forced", task, previous=previous)
    return task


def would_cycle(s, task_id, new_deps):
    """True when one of new_deps depends (directly or not) on task_id."""
    seen, frontier = set(), set(new_deps)
    while frontier:
        if task_id in frontier:
            return True
        seen |= frontier
        frontier = set(s.scalars(select(TaskDependency.depends_on_id)
                                 .where(TaskDependency.task_id.in_(frontier)))) - seen
    return False


def set_dependencies(s, task, deps):
    """Replace what a (not running) task waits for; refuses unknown ids and cycles."""
    if not isinstance(deps, list) or any(isinstance(d, bool) or not isinstance(d, int) for d in deps):
        raise BadRequest("depends_on must be a list of task ids")
    deps = set(deps)
    if task.id in deps:
        raise BadRequest("depends_on: a task cannot depend on itself")
    statuses = dict(s.execute(select(Task.id, Task.status).where(Task.id.in_(deps))).all()) if deps else {}
    missing = sorted(deps - set(statuses))
    if missing:
        raise BadRequest(f"depends_on: no task {', '.join(map(str, missing[:10]))}")
    if would_cycle(s, task.id, deps):
        raise BadRequest(f"depends_on: task {task.id} would wait for itself (a cycle)")
    for edge in s.scalars(select(TaskDependency).where(TaskDependency.task_id == task.id)):
        s.delete(edge)
    s.flush()
    for dep in deps:
        s.add(TaskDependency(task_id=task.id, depends_on_id=dep))
    if task.status in (TaskStatus.PENDING.value, TaskStatus.WAITING.value):
        done = all(st == TaskStatus.SUCCEEDED.value for st in statuses.values())
        task.status = TaskStatus.PENDING.value if done else TaskStatus.WAITING.value


# --- signals --------------------------------------------------------------------

LIVE_OF_TASK = select(EXECUTION.c.id, EXECUTION.c.status).where(
    EXECUTION.c.task_id == bindparam("task_id"), EXECUTION.c.status.in_(ACTIVE))
LIVE_OF_BATCH = (select(EXECUTION.c.id).join_from(EXECUTION, TASK, EXECUTION.c.task_id == TASK.c.id)
                 .where(TASK.c.batch_id == bindparam("batch_id"), EXECUTION.c.status.in_(bindparam("statuses", expanding=True)),
                        EXECUTION.c.paused.in_(bindparam("paused", expanding=True))))
SIGNALED = (update(EXECUTION).where(EXECUTION.c.id.in_(_ids))
            .values(signal=bindparam("sig"), signal_seq=func.coalesce(EXECUTION.c.signal_seq, 0) + 1)
            .returning(EXECUTION.c.id, EXECUTION.c.signal_seq, EXECUTION.c.worker_id))


def _signal(s, execution_ids, sig):
    """Ask the executions' workers to apply `sig` (delivered with their next poll answer):
    one UPDATE, their events by one insert; returns the workers to wake."""
    if not execution_ids:
        return set()
    s.flush()
    _expire(s, Execution, set(execution_ids))
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
