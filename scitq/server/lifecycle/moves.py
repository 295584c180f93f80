"""How a task moves on once an attempt ends or a user acts: retries, requeues, failures for good,
relaunches; decided on plain rows, written set-based."""
from datetime import timedelta

from sqlalchemy import bindparam, case, exists, func, select, update

from scitq.errors import Conflict
from scitq.server.db import add_events, event_row
from scitq.server.lifecycle.common import ACTIVE, DEPENDENCY, EXECUTION, IDS, NOW, TASK, expire_held
from scitq.server.lifecycle.dag import READY_DEPENDENTS, cancel_dependents, make_ready, revive_dependents
from scitq.server.models import Execution, Task, TaskDependency, utcnow
from scitq.status import ExecutionStatus, TaskStatus

# --- ends of attempts ---------------------------------------------------------

# What deciding an attempt's end reads of its task: plain columns, selected with the execution.
ATTEMPT_FIELDS = ("attempt", "retries", "retry_delay", "retry_backoff")
# The tasks whose attempts started (`started`) or succeeded (the other `ids`), by one
# statement: under load a worker's report brings an end and the start of the task queued
# behind it, and these were two of its dozen statements. It returns which succeeded tasks
# something waits for.
_STARTED = TASK.c.id.in_(bindparam("started", expanding=True))
TASKS_STARTED_OR_SUCCEEDED = (
    update(TASK).where(TASK.c.id.in_(IDS))
    .values(status=case((_STARTED, TaskStatus.RUNNING.value), else_=TaskStatus.SUCCEEDED.value),
            reason=case((_STARTED, TASK.c.reason), else_=None),
            not_before=case((_STARTED, TASK.c.not_before), else_=None), updated_at=NOW)
    .returning(TASK.c.id, TASK.c.status,
               exists().where(TaskDependency.__table__.c.depends_on_id == TASK.c.id)))
TASK_RETRIED = (update(TASK).where(TASK.c.id == bindparam("_id"))
                .values(status=TaskStatus.PENDING.value, not_before=bindparam("not_before"),
                        reason=bindparam("reason"), updated_at=NOW))
TASK_FAILED = (update(TASK).where(TASK.c.id == bindparam("_id"))
               .values(status=TaskStatus.FAILED.value, reason=bindparam("reason"), updated_at=NOW))
WAITED_FOR = (select(TaskDependency.__table__.c.depends_on_id).distinct()
              .where(TaskDependency.__table__.c.depends_on_id.in_(IDS)))
# An attempt that was not the task's fault is given back; the reason changes only when one is given.
TASK_GIVEN_BACK = (update(TASK).where(TASK.c.id == bindparam("_id"))
                   .values(status=TaskStatus.PENDING.value, updated_at=NOW,
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
        for it is canceled."""
        if retry and task["attempt"] <= task["retries"]:
            delay = task["retry_delay"] * task["retry_backoff"] ** max(task["attempt"] - 1, 0)
            not_before = utcnow() + timedelta(seconds=delay) if delay > 0 else None
            self.tasks[task["id"]] = ("retried", {"not_before": not_before,
                                                  "reason": f"attempt {task['attempt']} failed: {error}"[:1024]})
            self.event("task.retrying", "task", task["id"], attempt=task["attempt"],
                       retries=task["retries"], delay=delay)
        else:
            self.tasks[task["id"]] = ("failed", {"reason": (error or "failed")[:1024]})

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
        expire_held(s, Task, {row["_id"] for rows in by_kind.values() for row in rows})
        for kind, statement in (("retried", TASK_RETRIED), ("given_back", TASK_GIVEN_BACK),
                                ("failed", TASK_FAILED)):
            if kind in by_kind:
                conn.execute(statement, [{**row, "now": now} for row in by_kind[kind]])
        if "failed" in by_kind:     # a cascade only for those that something waits for
            failed = [row["_id"] for row in by_kind["failed"]]
            for tid in sorted(conn.execute(WAITED_FOR, {"ids": failed}).scalars()):
                cancel_dependents(s, [tid], f"{DEPENDENCY}{tid} failed")
        started = [r["_id"] for r in by_kind.get("started", ())]
        succeeded = [r["_id"] for r in by_kind.get("succeeded", ())]
        if started or succeeded:
            rows = conn.execute(TASKS_STARTED_OR_SUCCEEDED, {"ids": started + succeeded, "started": started,
                                                             "now": now})
            waited_for = [tid for tid, status, has_dependents in rows
                          if has_dependents and status == TaskStatus.SUCCEEDED.value]
            if waited_for:      # what waits for them is released once for all
                make_ready(s, READY_DEPENDENTS, sorted(waited_for))


LOST_WITH_TASKS = (select(EXECUTION.c.id, EXECUTION.c.task_id, EXECUTION.c.signal,
                         *(TASK.c[c] for c in ATTEMPT_FIELDS))
                  .join_from(EXECUTION, TASK, EXECUTION.c.task_id == TASK.c.id)
                  .where(EXECUTION.c.worker_id == bindparam("worker_id"), EXECUTION.c.status.in_(ACTIVE))
                  .order_by(EXECUTION.c.id))
EXECUTIONS_LOST = (update(EXECUTION).where(EXECUTION.c.id.in_(IDS))
                   .values(status=ExecutionStatus.LOST.value, reason="lost", error=bindparam("error"),
                           ended_at=NOW, signal=None))


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
    expire_held(s, Execution, {ex["id"] for ex in lost})
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


def _set_one(s, task, kind, detail, **values):
    """A user's change of one task, by one UPDATE (the session's copy is refreshed after) and
    its event, as the set-based moves write theirs."""
    s.flush()
    tid, now = task.id, utcnow()
    s.connection().execute(update(TASK).where(TASK.c.id == tid).values(updated_at=now, **values))
    expire_held(s, Task, {tid})
    add_events(s, [event_row(kind, "task", tid, detail, now)])


def cancel(s, task, reason):
    tid = task.id
    _set_one(s, task, "task.canceled", {"reason": reason}, status=TaskStatus.CANCELED.value,
             reason=reason[:1024])
    cancel_dependents(s, [tid], f"{DEPENDENCY}{tid} was canceled")



FINISHED = (TaskStatus.SUCCEEDED.value, TaskStatus.FAILED.value, TaskStatus.CANCELED.value)
RELAUNCHED = (update(TASK).where(TASK.c.id.in_(IDS), TASK.c.status.in_(FINISHED))
              .values(status=TaskStatus.PENDING.value, reason=None, not_before=None, updated_at=NOW))
STATUSES_OF = select(TASK.c.id, TASK.c.status).where(TASK.c.id.in_(IDS)).order_by(TASK.c.id)


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
    expire_held(s, Task, set(ids))
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
    _set_one(s, task, "task.forced", {"previous": previous}, status=TaskStatus.PENDING.value,
             reason=f"forced while {previous}", not_before=None)
    return task
