"""The stored batches and tasks: submission with its checks, lists, counts, and the user's edits
and deletes (what the tasks then become is the lifecycle's)."""
import hashlib
import json
import re

from sqlalchemy import delete, func, insert, select

from scitq.errors import BadRequest, Conflict, NotFound
from scitq.server import dialect, lifecycle
from scitq.server.db import get_or_404, insert_with_ids, lookup, record
from scitq.server.models import (MAX_ID, Batch, Execution, MinuteRollup, Submission, Task,
                                 TaskCount, TaskDependency, utcnow)
from scitq.status import REMAINING, BatchStatus, TaskStatus
from scitq.taskspec import check_uri, parse_options

MAX_COMMAND = 65536          # characters; bigger payloads belong in inputs, not the command
MAX_TASKS_PER_REQUEST = 100_000
# Not digits alone: "2024" in a URL or a filter would read as an id.
BATCH_NAME = re.compile(r"(?!\d+\Z)[A-Za-z0-9][A-Za-z0-9._+@:=-]{0,127}")    # fullmatch
# A docker image reference (registry[:port]/name[:tag][@digest]): nothing a shell or the
# engine's command line would read otherwise (no space, quote, $ or ;, no leading -).
IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}")
DEFAULT_BATCH = "default"
SUBMISSION_ID = re.compile(r"[A-Za-z0-9._+@:=/-]{1,255}")     # fullmatch
STATUSES = [s.value for s in TaskStatus]


def check_batch_name(name):
    if not isinstance(name, str) or not BATCH_NAME.fullmatch(name):
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


def create_batch(s, name, concurrency=None):
    if s.scalar(select(Batch.id).where(Batch.name == check_batch_name(name))):
        raise Conflict(f"batch {name!r} exists already")
    batch = get_or_create_batch(s, name)
    if concurrency is not None:
        change_batch(s, batch, {"concurrency": concurrency})
    return batch


MAX_BATCH_CONCURRENCY = 1_000_000


def change_batch(s, batch, changes):
    """Batch settings: `concurrency` caps its tasks running at once (None lifts the cap)."""
    unknown = set(changes) - {"concurrency"}
    if unknown:
        raise BadRequest(f"cannot change {', '.join(sorted(unknown))} of a batch")
    if "concurrency" in changes:
        cap = changes["concurrency"]
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool)
                                or not 1 <= cap <= MAX_BATCH_CONCURRENCY):
            raise BadRequest(f"concurrency must be an integer from 1 to {MAX_BATCH_CONCURRENCY}, "
                             "or null for no cap")
        batch.concurrency = cap
    record(s, "batch.changed", batch, **changes)
    return batch


MAX_RETRIES = 100
MAX_SECONDS = 366 * 86400.0       # timeouts and delays: at most a year
MAX_URIS = 10_000                 # inputs or resources of one task
MAX_DEPENDENCIES = 100_000
OPTION_FIELDS = ("retries", "retry_delay", "retry_backoff", "timeout", "staging_timeout",
                 "container", "container_options", "inputs", "resources", "output", "use_cache")
EDITABLE = ("command", "name", "shell") + OPTION_FIELDS


def _number(spec, key, where, low, high, integer=False, default=None):
    value = spec.get(key, default)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if (not isinstance(value, kind) or isinstance(value, bool) or value != value
            or not low <= value <= high):
        what = "an integer" if integer else "a number"
        raise BadRequest(f"{where}: '{key}' must be {what} from {low} to {high}")
    return value if integer else float(value)


def _text(spec, key, where, limit):
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise BadRequest(f"{where}: '{key}' must be a string of at most {limit} characters, no NUL")
    return value


def _uris(spec, key, where):
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_URIS:
        raise BadRequest(f"{where}: '{key}' must be a list of at most {MAX_URIS} URIs")
    for uri in value:
        try:
            check_uri(uri)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"{where}: {key}: {exc}") from None
    return value or None


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
    fields = {
        "command": command, "name": name,
        "shell": _flag(spec, "shell", where, True), "use_cache": _flag(spec, "use_cache", where, False),
        "retries": _number(spec, "retries", where, 0, MAX_RETRIES, integer=True, default=0),
        "retry_delay": _number(spec, "retry_delay", where, 0, MAX_SECONDS, default=0.0),
        "retry_backoff": _number(spec, "retry_backoff", where, 1, 100, default=1.0),
        "timeout": _number(spec, "timeout", where, 0.001, MAX_SECONDS),
        "staging_timeout": _number(spec, "staging_timeout", where, 0.001, MAX_SECONDS),
        "container": _text(spec, "container", where, 512),
        "container_options": _text(spec, "container_options", where, 4096),
        "inputs": _uris(spec, "inputs", where),
        "resources": _uris(spec, "resources", where),
        "output": _text(spec, "output", where, 4096),
    }
    _check_container(fields, where)
    if fields["output"] is not None:
        try:
            check_uri(fields["output"], actions=False)
        except ValueError as exc:
            raise BadRequest(f"{where}: output: {exc}") from None
    return fields


def _flag(spec, key, where, default):
    value = spec.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: '{key}' must be true or false")
    return value


def _check_container(fields, where):
    """The image reference and the options given with it."""
    if fields["container"] is not None and (not IMAGE.fullmatch(fields["container"])
                                             or ".." in fields["container"]):
        raise BadRequest(f"{where}: container {fields['container'][:80]!r} is not an image "
                         "reference (such as alpine, or registry:5000/team/tool:1.2@sha256:...)")
    if fields["container_options"] and not fields["container"]:
        raise BadRequest(f"{where}: 'container_options' need a 'container'")
    if fields["container_options"]:
        try:
            parse_options(fields["container_options"])
        except ValueError as exc:
            raise BadRequest(f"{where}: container_options: {exc}") from None


def _dependencies(spec, where, index, refs):
    """The task's dependencies: ids of stored tasks, and refs of tasks in the same request."""
    deps = spec.get("depends_on")
    if deps is None:
        return [], []
    if isinstance(deps, (int, str)) and not isinstance(deps, bool):
        deps = [deps]
    if not isinstance(deps, list) or len(deps) > MAX_DEPENDENCIES:
        raise BadRequest(f"{where}: 'depends_on' must be a list of task ids (or refs of tasks "
                         "in the same request)")
    ids, local = [], []
    for dep in deps:
        if isinstance(dep, bool) or not isinstance(dep, (int, str)):
            raise BadRequest(f"{where}: depends_on: {dep!r} is neither a task id nor a ref")
        if isinstance(dep, int):
            if not 0 < dep <= MAX_ID:
                raise BadRequest(f"{where}: depends_on: no task {dep}")
            ids.append(dep)
        elif dep not in refs:
            raise BadRequest(f"{where}: depends_on: no task with ref {dep[:80]!r} in this request")
        elif refs[dep] == index:
            raise BadRequest(f"{where}: depends_on: a task cannot depend on itself")
        else:
            local.append(refs[dep])
    return ids, local


def _refs(specs):
    refs = {}
    for i, spec in enumerate(specs):
        ref = spec.get("ref") if isinstance(spec, dict) else None
        if ref is None:
            continue
        if not isinstance(ref, str) or not ref or len(ref) > 255:
            raise BadRequest(f"task #{i}: 'ref' must be a string of 1-255 characters")
        if ref in refs:
            raise BadRequest(f"task #{i}: ref {ref!r} is used twice in this request")
        refs[ref] = i
    return refs


def _refuse_cycles(local_deps):
    """local_deps[i]: indexes task i waits for, in one request; a cycle is a 400."""
    state = {}
    for start in range(len(local_deps)):
        stack = [(start, iter(local_deps[start]))]
        if state.get(start):
            continue
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise BadRequest(f"depends_on: tasks #{nxt} and #{node} wait for each other "
                                 "(a cycle): nothing would ever start")
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(local_deps[nxt])))


def create_tasks(s, specs, batch_name=None):
    """Insert many tasks in one transaction; returns their ids in submission order.

    A task's `depends_on` holds ids of stored tasks or `ref`s of tasks of the same request
    (so a whole DAG goes in at once); unknown ids and cycles are refused.
    """
    if not specs:
        raise BadRequest("no task given")
    if len(specs) > MAX_TASKS_PER_REQUEST:
        raise BadRequest(f"{len(specs)} tasks in one request; the limit is {MAX_TASKS_PER_REQUEST}")
    refs = _refs(specs)
    batches = {}
    rows, stored_deps, local_deps = [], [], []
    now = utcnow()
    for i, spec in enumerate(specs):
        where = f"task #{i}" if len(specs) > 1 else "task"
        fields = check_task(spec, where)
        ids, local = _dependencies(spec, where, i, refs)
        stored_deps.append(ids)
        local_deps.append(local)
        name = spec.get("batch") or batch_name or DEFAULT_BATCH
        if name not in batches:
            batches[name] = get_or_create_batch(s, name)
        fields.update(batch_id=batches[name].id, status=TaskStatus.PENDING.value, attempt=0,
                      created_at=now, updated_at=now)
        rows.append(fields)
    _refuse_cycles(local_deps)
    known = _stored_statuses(s, stored_deps)
    if any(stored_deps) or any(local_deps):
        _initial_statuses(rows, stored_deps, local_deps, known)
    ids = _insert_tasks(s, rows)
    edges = [{"task_id": ids[i], "depends_on_id": d}
             for i in range(len(rows)) for d in set(stored_deps[i]) | {ids[j] for j in local_deps[i]}]
    if edges:
        s.execute(insert(TaskDependency), edges)
    for batch in batches.values():
        mine = [i for i, r in zip(ids, rows) if r["batch_id"] == batch.id]
        record(s, "tasks.created", batch, count=len(mine), first=mine[0], last=mine[-1])
    return ids


def _stored_statuses(s, stored_deps):
    """{id: status} of the stored tasks depended on; an unknown id is a 400."""
    wanted = {d for ids in stored_deps for d in ids}
    # FOR SHARE (PostgreSQL; SQLite has one writer): a dependency that ends meanwhile waits for
    # this submission, so its release or cancel cascade sees the new tasks, or this submission
    # sees its end; else a task submitted as it failed stayed waiting forever.
    known = dict(s.execute(select(Task.id, Task.status).where(Task.id.in_(wanted)).order_by(Task.id)
                           .with_for_update(read=True)).all()) if wanted else {}
    missing = sorted(wanted - set(known))
    if missing:
        raise BadRequest(f"depends_on: no task {', '.join(map(str, missing[:10]))}"
                         + (" ..." if len(missing) > 10 else ""))
    return known


def submit_tasks(s, specs, batch_name=None, submission=None):
    """create_tasks, once per submission id: (ids, True) when stored now; (the ids stored
    then, False) when a chunk with this id and the same content was stored already (a retry
    of a request whose answer was lost); the same id with other content is a 409.

    The submission row goes in the tasks' transaction, so a crash keeps both or neither. Two
    requests of one id at once: the second fails on the row's primary key, and the route
    calls again to find the first's ids.
    """
    if submission is None:
        return create_tasks(s, specs, batch_name), True
    if not isinstance(submission, str) or not SUBMISSION_ID.fullmatch(submission):
        raise BadRequest("'submission' must be 1-255 characters: letters, digits and ._+@:=/-")
    digest = hashlib.sha256(json.dumps([batch_name, specs], sort_keys=True,
                                       separators=(",", ":")).encode()).hexdigest()
    stored = s.get(Submission, submission)
    if stored is not None:
        if stored.digest != digest:
            raise Conflict(f"submission {submission[:80]!r} was stored with other tasks: "
                           "give a new submission id")
        return stored.task_ids(), False
    ids = create_tasks(s, specs, batch_name)
    contiguous = ids[-1] - ids[0] + 1 == len(ids)
    s.add(Submission(id=submission, digest=digest, first_id=ids[0], last_id=ids[-1],
                     count=len(ids), ids=None if contiguous else ids))
    s.flush()
    return ids, True


def _insert_tasks(s, rows):
    """Insert the task rows; their ids, in order.

    On PostgreSQL the ids are drawn from the table's sequence first and the rows sent by
    COPY (db.insert_with_ids): an INSERT ... RETURNING of many rows is one huge statement per
    thousand rows, which the driver parses placeholder by placeholder (most of a bulk
    request's time, measured), and even a pipelined executemany costs driver Python per row.
    """
    keys = set().union(*rows)       # the same keys in every row (a reason is set on some)
    return insert_with_ids(s.connection(), Task.__table__, [{**dict.fromkeys(keys), **row} for row in rows])


def _initial_statuses(rows, stored_deps, local_deps, known):
    """waiting while a dependency may still succeed; canceled when one never will."""
    dead = {TaskStatus.FAILED.value, TaskStatus.CANCELED.value}
    for i in _topological(local_deps):
        row = rows[i]
        statuses = [(d, known[d]) for d in stored_deps[i]]
        statuses += [(f"#{j}", rows[j]["status"]) for j in local_deps[i]]
        gone = [d for d, st in statuses if st in dead]
        if gone:
            row["status"] = TaskStatus.CANCELED.value
            row["reason"] = f"dependency {gone[0]} failed or was canceled"
        elif any(st != TaskStatus.SUCCEEDED.value for _, st in statuses):
            row["status"] = TaskStatus.WAITING.value


def _topological(local_deps):
    """Indexes with every task after the ones it depends on (the graph has no cycle)."""
    order, done = [], [False] * len(local_deps)
    for start in range(len(local_deps)):
        stack = [(start, iter(local_deps[start]))]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                if not done[node]:
                    done[node] = True
                    order.append(node)
            elif not done[nxt]:
                stack.append((nxt, iter(local_deps[nxt])))
    return order


def batch_counts(s, batch_ids=None):
    """{batch_id: {status: n, ..., "remaining": n, "total": n}} from the rows of task_count
    (kept by triggers in each writer's transaction: exact, and a few rows per batch)."""
    n = func.sum(TaskCount.n)
    q = (select(TaskCount.batch_id, TaskCount.status, n)
         .group_by(TaskCount.batch_id, TaskCount.status).having(n != 0))
    if batch_ids is not None:
        q = q.where(TaskCount.batch_id.in_(batch_ids))
    counts = {}
    for batch_id, status, total in s.execute(q):
        counts.setdefault(batch_id, {})[status] = int(total)
    return {bid: summarize(c) for bid, c in counts.items()}


def compact_counts(s):
    """Fold task_count's rows into one per (batch, status), dropping those at zero (a deleted
    batch's). Exact under concurrent writers: rows they add meanwhile are not deleted."""
    dialect.fold_counts(s, TaskCount.__table__)


def summarize(by_status):
    out = {status: by_status.get(status, 0) for status in STATUSES}
    out["remaining"] = sum(out[s.value] for s in REMAINING)
    out["total"] = sum(by_status.values())
    return out


def batch_summary(s, batch):
    return _summary(batch, batch_counts(s, [batch.id]).get(batch.id) or summarize({}))


def list_batches(s):
    batches = s.scalars(select(Batch).order_by(Batch.id)).all()
    counts = batch_counts(s)
    return [_summary(b, counts.get(b.id) or summarize({})) for b in batches]


def _summary(batch, counts):
    d = batch.to_dict()
    d["counts"] = counts
    d["status"] = BatchStatus.shown(batch.status, counts)
    return d


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
    # Its rollups go with its executions (SQLite may give its id to a new batch).
    s.execute(delete(MinuteRollup).where(MinuteRollup.batch_id == batch.id))
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
    if name and "\x00" in name:
        raise BadRequest("a task name holds no NUL character")
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
    d["depends_on"] = sorted(s.scalars(select(TaskDependency.depends_on_id)
                                       .where(TaskDependency.task_id == task.id)))
    d["executions"] = [e.to_dict() for e in s.scalars(
        select(Execution).where(Execution.task_id == task.id).order_by(Execution.id))]
    return d


def latest_execution(s, task_id):
    ex = s.scalar(select(Execution).where(Execution.task_id == task_id)
                  .order_by(Execution.id.desc()).limit(1))
    if ex is None:
        get_or_404(s, Task, task_id)
        raise NotFound(f"task {task_id} has not run yet")
    return ex


def _refuse_if_active(task, action):
    if TaskStatus(task.status).is_active:
        raise Conflict(f"task {task.id} is {task.status}: cannot {action} it now")


def update_task(s, task, changes):
    _refuse_if_active(task, "edit")
    unknown = set(changes) - set(EDITABLE) - {"depends_on"}
    if unknown:
        raise BadRequest(f"cannot change {', '.join(sorted(unknown))} of a task")
    merged = {key: getattr(task, key) for key in EDITABLE}
    merged.update({k: v for k, v in changes.items() if k in merged})
    fields = check_task(merged)
    for key, value in fields.items():
        setattr(task, key, value)
    if "depends_on" in changes:
        lifecycle.set_dependencies(s, task, changes["depends_on"])
    record(s, "task.updated", task, fields=sorted(changes))
    return task


def delete_task(s, task):
    _refuse_if_active(task, "delete")
    execution_ids = s.scalars(select(Execution.id).where(Execution.task_id == task.id)).all()
    waiting_for_it = s.scalars(select(TaskDependency.task_id)
                               .where(TaskDependency.depends_on_id == task.id)).all()
    record(s, "task.deleted", task, name=task.name, batch_id=task.batch_id)
    s.delete(task)
    s.flush()
    if waiting_for_it:      # one dependency less: they may be ready now
        lifecycle.settle(s, s.scalars(select(Task).where(Task.id.in_(waiting_for_it))).all())
    return execution_ids
