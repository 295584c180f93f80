"""The calls workers make: registration, heartbeats, settings, what a poll reads, and the reports
(whose meaning for each execution is the lifecycle's)."""
import re

from sqlalchemy import bindparam, func, select, update

from scitq.errors import BadRequest, Conflict, Forbidden, NotFound
from scitq.server import lifecycle, tokens
from scitq.server.db import record
from scitq.server.heard import clean_stats
from scitq.server.dispatch import ACTIVE, EXECUTION
from scitq.server.lifecycle import give_back
from scitq.server.lifecycle.executions import ENDED
from scitq.server.models import MAX_ID, MAX_INT, Batch, Execution, Worker, utcnow
from scitq.server.task_store import check_batch_name, get_or_create_batch
from scitq.status import ExecutionStatus, WorkerStatus

MAX_CONCURRENCY = 1024
SETTABLE_STATUSES = (WorkerStatus.RUNNING, WorkerStatus.PAUSED, WorkerStatus.DRAINING)
SERVER_SETTINGS = ("concurrency", "prefetch", "batch", "status")   # kept over its restarts
# What the API's pattern says (no '/', no space, not digits alone), checked whole: a JSON
# Schema pattern's $ lets a final line break through, and control characters are no space.
WORKER_NAME = re.compile(r"(?!\d+\Z)[^/\s\x00-\x1f\x7f]{1,128}")


WORKER = Worker.__table__


class WorkerRow:
    """A worker's row as a poll's heartbeat or a report needs it: read by one Core SELECT and
    written back by one UPDATE of the fields that changed (`save`). Loading and flushing the
    ORM object was about a quarter of a report's server time."""

    __tablename__ = "worker"        # what record() names the object by
    FIELDS = ("id", "name", "status", "concurrency", "prefetch", "depth", "batch_id", "last_seen",
              "idle_since", "set_on_server", "load", "memory", "disk")
    SELECT = select(*(WORKER.c[f] for f in FIELDS)).where(WORKER.c.id == bindparam("id"))
    LOCKED = SELECT.with_for_update()

    def __init__(self, row):
        object.__setattr__(self, "changed", {})
        for key in self.FIELDS:
            object.__setattr__(self, key, row[key])

    def __setattr__(self, key, value):
        if key not in self.FIELDS:
            raise AttributeError(f"a worker row has no {key}")
        if getattr(self, key) != value:
            self.changed[key] = value
        object.__setattr__(self, key, value)

    def save(self, s):
        if self.changed:
            s.connection().execute(update(WORKER).where(WORKER.c.id == self.id).values(**self.changed))
            self.changed.clear()


def get_worker(s, worker_id, lock=False):
    """The worker's row (a WorkerRow: call its save() before the transaction ends); `lock`:
    FOR UPDATE, until the transaction ends."""
    row = s.connection().execute(WorkerRow.LOCKED if lock else WorkerRow.SELECT, {"id": worker_id}).first()
    if row is None:
        raise NotFound(f"no worker {worker_id}")
    return WorkerRow(row._mapping)


def worker_settings(s, worker_id):
    """What a poll needs of its worker (status, concurrency, prefetch, depth), without
    loading the whole row and its batch."""
    row = s.execute(select(Worker.status, Worker.concurrency, Worker.prefetch, Worker.depth)
                    .where(Worker.id == worker_id)).first()
    if row is None:
        raise NotFound(f"no worker {worker_id}")
    return row


def check_settings(changes):
    """Validate the user-settable fields of a worker."""
    for key in ("concurrency", "prefetch", "depth"):
        if key in changes and not (key != "concurrency" and changes[key] is None):   # None: auto
            value = changes[key]
            low = 1 if key == "concurrency" else 0
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_CONCURRENCY:
                raise BadRequest(f"{key} must be an integer from {low} to {MAX_CONCURRENCY}")
    if "status" in changes and changes["status"] not in [s.value for s in SETTABLE_STATUSES]:
        raise BadRequest(f"status can be set to {', '.join(s.value for s in SETTABLE_STATUSES)}")
    if changes.get("batch") is not None:
        check_batch_name(changes["batch"])


def register(s, info, create_batch=True):
    """A worker process starts. A previous process of the same name is gone, so whatever it
    held goes back to the queue before the new one gets anything. Without `create_batch`
    (a worker token's registration), its batch must exist."""
    check_settings(info)
    name = info["name"]
    if not isinstance(name, str) or not WORKER_NAME.fullmatch(name):
        raise BadRequest(f"invalid worker name {str(name)[:80]!r}: 1-128 characters, no '/', "
                         "space or control character, not digits alone (those name ids)")
    for key in ("hostname", "version"):
        if "\x00" in (info.get(key) or ""):
            raise BadRequest(f"{key} holds a NUL character")
    worker = s.scalar(select(Worker).where(Worker.name == name))
    if worker is None:
        worker = Worker(name=name)
        s.add(worker)
        s.flush()
        given_back = 0
    else:
        given_back = give_back(s, worker.id, "worker restarted")
    kept = worker.set_on_server or {}
    worker.hostname = info.get("hostname")
    # Its own flags fill in only what the server never set on a worker of this name.
    if "concurrency" not in kept:
        worker.concurrency = info.get("concurrency", 1)
    if "prefetch" not in kept:
        worker.prefetch = info.get("prefetch")
    worker.depth = info.get("depth") or 0
    worker.cpus = info.get("cpus")
    worker.version = info.get("version")
    if "batch" not in kept:
        worker.batch = _batch(s, info.get("batch"), create_batch)
    if kept.get("status") == WorkerStatus.DRAINING.value:
        remember(worker, {"status": None})      # a new process has nothing left to drain
    worker.status = status_kept(worker)
    worker.last_seen = worker.idle_since = utcnow()
    record(s, "worker.registered", worker, hostname=worker.hostname, given_back=given_back)
    return worker


def remember(worker, changes):
    """Note the settings the server gives a worker ({name: value}, of SERVER_SETTINGS), so
    that they outlive its process; a status of running (or None) is no setting to keep."""
    kept = dict(worker.set_on_server or {})     # a new dict: the JSON column sees assignments only
    kept.update({k: v for k, v in changes.items() if k in SERVER_SETTINGS})
    if kept.get("status") in (None, WorkerStatus.RUNNING.value):
        kept.pop("status", None)
    worker.set_on_server = kept or None


def status_kept(worker):
    """The status of a worker that comes back (registered again, or heard again once lost):
    the one the server set it to (paused, draining), else running."""
    return (worker.set_on_server or {}).get("status", WorkerStatus.RUNNING.value)


def _batch(s, name, create):
    if not name:
        return None
    if create:
        return get_or_create_batch(s, name)
    batch = s.scalar(select(Batch).where(Batch.name == check_batch_name(name)))
    if batch is None:
        raise NotFound(f"no batch {name!r}: a worker token cannot create one (submit to it first)")
    return batch


def change_worker(s, worker, changes):
    check_settings(changes)
    for key in ("concurrency", "prefetch", "status"):
        if key in changes and getattr(worker, key) != changes[key]:
            if worker.status in (WorkerStatus.OFFLINE.value, WorkerStatus.LOST.value) and key == "status":
                raise Conflict(f"worker {worker.name} is {worker.status}: it cannot be set to {changes[key]}")
            setattr(worker, key, changes[key])
    if "batch" in changes:
        worker.batch = get_or_create_batch(s, changes["batch"]) if changes["batch"] else None
    remember(worker, changes)
    record(s, "worker.changed", worker, **{k: v for k, v in changes.items()})
    return worker


def delete_worker(s, worker):
    """Forget a worker; its live executions are lost and their tasks requeued."""
    n = give_back(s, worker.id, "worker deleted")
    tokens.revoke_worker_tokens(s, worker.id)
    record(s, "worker.deleted", worker, name=worker.name, given_back=n)
    s.delete(worker)
    return n


def worker_news(s, worker, status):
    """The worker's own word: it drains (takes nothing new), or it exits (offline)."""
    if status == WorkerStatus.DRAINING.value:
        worker.status = status
    elif status == WorkerStatus.OFFLINE.value:
        worker.status = status
        give_back(s, worker.id, "worker exited")
    else:
        raise BadRequest(f"a worker can only say it is draining or offline, not {status!r}")
    record(s, f"worker.{status}", worker)


def running_counts(s, worker_ids=None):
    q = (select(Execution.worker_id, func.count())
         .where(Execution.status.in_(ACTIVE)).group_by(Execution.worker_id))
    if worker_ids is not None:
        q = q.where(Execution.worker_id.in_(worker_ids))
    return dict(s.execute(q).all())


def needs_heartbeat(worker):
    """Whether hearing the worker changes its row now: a worker marked lost is back. Else
    its call is only noted (scitq.server.heard: written for all workers once a second)."""
    return worker.status == WorkerStatus.LOST.value


FINAL_REPORTS = ("succeeded", "failed", "released")     # report statuses that end an execution


def new_depth(worker, depth):
    """The depth a worker that sizes its own prefetch told, when it is news (else None)."""
    if worker.prefetch is None and isinstance(depth, int) and not isinstance(depth, bool) \
            and depth != worker.depth:
        return max(0, min(depth, MAX_CONCURRENCY))
    return None


def keep_depth(worker, depth):
    depth = new_depth(worker, depth)
    if depth is not None:
        worker.depth = depth


def heartbeat(s, worker, stats):
    """Hear the worker in this transaction (its time and stats written now)."""
    worker.last_seen = utcnow()
    for key, value in clean_stats(stats).items():
        setattr(worker, key, value)
    if worker.status == WorkerStatus.LOST.value:
        # It was only slow: its executions were given back already, but it may work again
        # (or stay paused, if it was paused when it fell silent).
        worker.status = status_kept(worker)
        record(s, "worker.back", worker)


def pending_work(s, worker_id, known):
    """(ids of the assignments the worker does not hold yet, signals for its live
    executions, ids of `known` that are no longer its to run: given back while it was
    silent, or deleted, the ids of its live executions), from one query (two when some
    of `known` ended): a poll makes it each time it looks (and `assignments` for the new
    ones)."""
    rows = s.connection().execute(LIVE_OF_WORKER, {"worker_id": worker_id})
    new, signals, live = [], [], set()
    for eid, status, sig, seq in rows:
        live.add(eid)
        if status == ExecutionStatus.ASSIGNED.value and eid not in known:
            new.append(eid)
        if sig is not None:
            signals.append({"execution_id": eid, "signal": sig, "seq": seq})
    left = set(known) - live
    if left:        # those it ended itself (its reports crossed this poll) are not gone
        left -= set(s.connection().execute(ENDED_BY_WORKER, {"ids": list(left), "worker_id": worker_id})
                    .scalars())
    return new, signals, sorted(left), live


# The statements of polls and reports, built once: SQLAlchemy then neither rebuilds them
# nor computes their cache keys again for each request (that was a tenth of a report's time).
_ids = bindparam("ids", expanding=True)
LIVE_OF_WORKER = (select(EXECUTION.c.id, EXECUTION.c.status, EXECUTION.c.signal, EXECUTION.c.signal_seq)
                  .where(EXECUTION.c.worker_id == bindparam("worker_id"), EXECUTION.c.status.in_(ACTIVE))
                  .order_by(EXECUTION.c.id))
ENDED_BY_WORKER = select(EXECUTION.c.id).where(
    EXECUTION.c.id.in_(_ids), EXECUTION.c.worker_id == bindparam("worker_id"),
    EXECUTION.c.status.in_(ENDED + (ExecutionStatus.RELEASED.value,)))


def apply_reports(s, worker, reports, outputs):
    """Apply a worker's reports in order. Returns (acked ids, refused [{id, error}]).

    Reports are idempotent: a report the server already applied is acked again, so a
    worker that did not hear the answer can simply send it once more.

    The whole batch is one transaction: the executions reported and what their ends read of
    their tasks come by one query, each report is decided on those plain rows, and what
    changed is written by one statement per table (the tasks' moves by lifecycle.Moves, one
    statement per target status, the events by one insert). Loading and flushing ORM objects
    was most of the server's time per task.
    """
    acked, refused = [], []
    ids = {r.get("execution_id") for r in reports if isinstance(r, dict)}
    ids = [eid for eid in ids if isinstance(eid, int) and not isinstance(eid, bool) and 0 < eid <= MAX_ID]
    batch = lifecycle.Reports(s, worker, outputs, ids)
    for i, rep in enumerate(reports):
        eid = rep.get("execution_id")
        try:
            _check_report(i, rep)
            batch.apply(rep)
            acked.append(eid)
        except (BadRequest, Conflict, Forbidden, NotFound) as err:
            refused.append({"execution_id": eid, "error": err.message, "status": err.http_status})
    batch.write()
    # A worker left with nothing to run gets its idle_since from the dispatch pass these
    # reports wake (it counts every worker's executions anyway): no query per report here.
    return acked, refused


def _check_report(i, rep):
    """Refuse report #i when its execution id or its integers are not what they must be."""
    eid = rep.get("execution_id")
    if not isinstance(eid, int) or isinstance(eid, bool):
        raise BadRequest(f"report #{i}: execution_id must be an integer")
    if not 0 < eid <= MAX_ID:
        raise NotFound(f"no execution {eid}")
    for key in ("pid", "return_code"):
        value = rep.get(key)
        if value is not None and (not isinstance(value, int) or not -MAX_INT <= value <= MAX_INT):
            raise BadRequest(f"report #{i}: {key} must be a 32-bit integer")
