"""Batches and tasks: submission, queries and the user's changes to them."""
import re

from sqlalchemy import func, insert, select

from scitq.errors import BadRequest, Conflict, NotFound
from scitq.server.db import lookup, record
from scitq.server.models import Batch, Execution, Task, utcnow
from scitq.status import REMAINING, BatchStatus, TaskStatus

MAX_COMMAND = 65536          # characters; bigger payloads belong in inputs, not the command
MAX_TASKS_PER_REQUEST = 100_000
# Not digits alone: "2024" in a URL or a filter would read as an id.
BATCH_NAME = re.compile(r"^(?!\d+$)[A-Za-z0-9][A-Za-z0-9._+@:=-]{0,127}$")
DEFAULT_BATCH = "default"
STATUSES = [s.value for s in TaskStatus]


def check_batch_name(name):
    if not isinstance(name, str) or not BATCH_NAME.match(name):
        raise BadRequest(f"invalid batch name {str(name)[:80]!r}: 1-128 characters, letters, "
                         "digits and ._+@:=- (no '/' nor spaces), starting with a letter or digit, "
                         "not digits alone")
    return name


def get_batch(s, ref):
    return lookup(s, Batch, ref)


def get_or_create_batch(s, name):
    batch = s.scalar(select(Batch).where(Batch.name == check_batch_name(name)))
    if batch is None:
        batch = Batch(name=name)
        s.add(batch)
        s.flush()
        record(s, "batch.created", batch, name=name)
    return batch


def create_batch(s, name):
    if s.scalar(select(Batch.id).where(Batch.name == check_batch_name(name))):
        raise Conflict(f"batch {name!r} exists already")
    return get_or_create_batch(s, name)


def get_task(s, task_id):
    task = s.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    return task


def check_task(spec, where="task"):
    """Validate one task submission beyond its JSON schema; returns the clean fields."""
    if not isinstance(spec, dict):
        raise BadRequest(f"{where}: expected an object")
    command = spec.get("command")
    if not isinstance(command, str) or not command.strip():
        raise BadRequest(f"{where}: 'command' is required and must be a non-empty string")
    if len(command) > MAX_COMMAND:
        raise BadRequest(f"{where}: command is {len(command)} characters long; the limit is "
                         f"{MAX_COMMAND} (pass big data as inputs or files)")
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 255):
        raise BadRequest(f"{where}: 'name' must be a string of at most 255 characters")
    if "\x00" in command or (name and "\x00" in name):
        raise BadRequest(f"{where}: a NUL character cannot be part of a command or a name")
    shell = spec.get("shell", True)
    if not isinstance(shell, bool):
        raise BadRequest(f"{where}: 'shell' must be true or false")
    return {"command": command, "name": name, "shell": shell}


def create_tasks(s, specs, batch_name=None):
    """Insert many tasks in one statement; returns their ids in submission order."""
    if not specs:
        raise BadRequest("no task given")
    if len(specs) > MAX_TASKS_PER_REQUEST:
        raise BadRequest(f"{len(specs)} tasks in one request; the limit is {MAX_TASKS_PER_REQUEST}")
    batches = {}
    rows = []
    now = utcnow()
    for i, spec in enumerate(specs):
        fields = check_task(spec, f"task #{i}" if len(specs) > 1 else "task")
        name = spec.get("batch") or batch_name or DEFAULT_BATCH
        if name not in batches:
            batches[name] = get_or_create_batch(s, name)
        fields.update(batch_id=batches[name].id, status=TaskStatus.PENDING.value, attempt=0,
                      created_at=now, updated_at=now)
        rows.append(fields)
    ids = s.scalars(insert(Task).returning(Task.id, sort_by_parameter_order=True), rows).all()
    for batch in batches.values():
        mine = [i for i, r in zip(ids, rows) if r["batch_id"] == batch.id]
        record(s, "tasks.created", batch, count=len(mine), first=mine[0], last=mine[-1])
    return ids


def batch_counts(s, batch_ids=None):
    """{batch_id: {status: n, ..., "remaining": n, "total": n}} from one GROUP BY."""
    q = select(Task.batch_id, Task.status, func.count()).group_by(Task.batch_id, Task.status)
    if batch_ids is not None:
        q = q.where(Task.batch_id.in_(batch_ids))
    counts = {}
    for batch_id, status, n in s.execute(q):
        counts.setdefault(batch_id, {})[status] = n
    return {bid: summarize(c) for bid, c in counts.items()}


def summarize(by_status):
    out = {status: by_status.get(status, 0) for status in STATUSES}
    out["remaining"] = sum(out[s.value] for s in REMAINING)
    out["total"] = sum(by_status.values())
    return out


def batch_summary(s, batch):
    d = batch.to_dict()
    d["counts"] = batch_counts(s, [batch.id]).get(batch.id) or summarize({})
    return d


def list_batches(s):
    batches = s.scalars(select(Batch).order_by(Batch.id)).all()
    counts = batch_counts(s)
    out = []
    for b in batches:
        d = b.to_dict()
        d["counts"] = counts.get(b.id) or summarize({})
        out.append(d)
    return out


def set_batch_status(s, batch, status):
    if batch.status != status.value:
        batch.status = status.value
        record(s, f"batch.{'paused' if status is BatchStatus.PAUSED else 'resumed'}", batch)
    return batch


def delete_batch(s, batch):
    """Delete a batch and its tasks; refused while some of them are running."""
    active = s.scalar(select(func.count()).where(
        Task.batch_id == batch.id,
        Task.status.in_([TaskStatus.ASSIGNED.value, TaskStatus.RUNNING.value])))
    if active:
        raise Conflict(f"batch {batch.name!r} has {active} task(s) assigned or running: "
                       "pause it and let them finish first")
    execution_ids = s.scalars(select(Execution.id).join(Task).where(Task.batch_id == batch.id)).all()
    record(s, "batch.deleted", batch, name=batch.name)
    s.delete(batch)
    return execution_ids


def list_tasks(s, batch=None, status=None, name=None, after=None, limit=100):
    """A page of tasks in id order; `after` is the cursor (the last id of the previous page)."""
    q = select(Task).order_by(Task.id).limit(limit)
    if batch is not None:
        q = q.where(Task.batch_id == get_batch(s, batch).id)
    if status:
        wanted = status if isinstance(status, list) else [status]
        for st in wanted:
            if st not in STATUSES:
                raise BadRequest(f"unknown status {st!r}: one of {', '.join(STATUSES)}")
        q = q.where(Task.status.in_(wanted))
    if name:
        pattern = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")
        q = q.where(Task.name.like(pattern, escape="\\"))
    if after is not None:
        q = q.where(Task.id > after)
    tasks = s.scalars(q).all()
    next_cursor = tasks[-1].id if len(tasks) == limit else None
    return tasks, next_cursor


def task_detail(s, task):
    d = task.to_dict()
    d["executions"] = [e.to_dict() for e in s.scalars(
        select(Execution).where(Execution.task_id == task.id).order_by(Execution.id))]
    return d


def latest_execution(s, task_id):
    ex = s.scalar(select(Execution).where(Execution.task_id == task_id)
                  .order_by(Execution.id.desc()).limit(1))
    if ex is None:
        get_task(s, task_id)
        raise NotFound(f"task {task_id} has not run yet")
    return ex


def _refuse_if_active(task, action):
    if TaskStatus(task.status).is_active:
        raise Conflict(f"task {task.id} is {task.status}: cannot {action} it now")


def relaunch_task(s, task):
    """Put a finished task back in the queue; its past executions stay as history."""
    _refuse_if_active(task, "relaunch")
    if task.status in (TaskStatus.PENDING.value, TaskStatus.WAITING.value):
        raise Conflict(f"task {task.id} is already {task.status}")
    previous = task.status
    task.status = TaskStatus.PENDING.value
    record(s, "task.relaunched", task, previous=previous)
    return task


def update_task(s, task, changes):
    _refuse_if_active(task, "edit")
    merged = {"command": task.command, "name": task.name, "shell": task.shell}
    merged.update({k: v for k, v in changes.items() if k in merged})
    fields = check_task(merged)
    unknown = set(changes) - set(merged)
    if unknown:
        raise BadRequest(f"cannot change {', '.join(sorted(unknown))} of a task")
    for key, value in fields.items():
        setattr(task, key, value)
    record(s, "task.updated", task, fields=sorted(changes))
    return task


def delete_task(s, task):
    _refuse_if_active(task, "delete")
    execution_ids = s.scalars(select(Execution.id).where(Execution.task_id == task.id)).all()
    record(s, "task.deleted", task, name=task.name, batch_id=task.batch_id)
    s.delete(task)
    return execution_ids
