"""The dependency DAG: what waits for what, released, canceled and revived set-based."""

from sqlalchemy import bindparam, select, update

from scitq.errors import BadRequest
from scitq.server.db import add_events, among, event_row
from scitq.server.lifecycle.common import DEPENDENCY, IDS, expire_held
from scitq.server.models import Task, TaskDependency, utcnow
from scitq.status import TaskStatus


def _dependents(task_ids):
    return select(TaskDependency.task_id).where(TaskDependency.depends_on_id.in_(task_ids))


# --- the DAG ------------------------------------------------------------------

def settle(s, tasks):
    """Those of these waiting tasks whose every dependency has succeeded become pending."""
    ids = [t.id for t in tasks if t.status == TaskStatus.WAITING.value]
    if ids:
        make_ready(s, READY, ids)


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


READY = _ready(IDS)
READY_DEPENDENTS = _ready(_dependents(IDS))


def make_ready(s, statement, ids):
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
    expire_held(s, Task, set(changed))
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
    below = (select(edge.c.task_id.label("id")).where(edge.c.depends_on_id.in_(IDS))
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
