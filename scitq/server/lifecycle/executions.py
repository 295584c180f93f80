"""What a worker's report means for its execution (started, ended with its output, released,
signaled, a cached result), decided on plain rows; the task's move goes to Moves."""
import base64
import binascii
import re

from sqlalchemy import bindparam, select, update

from scitq.errors import BadRequest, Conflict, Forbidden, NotFound
from scitq.server.lifecycle.common import EXECUTION, IDS, SIGNALS, TASK
from scitq.server.lifecycle.moves import ATTEMPT_FIELDS, Moves
from scitq.server.models import MAX_ID, utcnow
from scitq.status import ExecutionStatus

ENDED = (ExecutionStatus.SUCCEEDED.value, ExecutionStatus.FAILED.value)
EXECUTION_WRITTEN = ("status", "pid", "return_code", "reason", "error", "signal", "paused",
                     "started_at", "ended_at", "stdout_bytes", "stderr_bytes", "cached_from")
# A reported execution with what deciding its end reads of its task, as one plain row.
REPORTED = (select(*(EXECUTION.c[c] for c in ("id", "worker_id", "task_id", "signal_seq", "cache_key",
                                               *EXECUTION_WRITTEN)),
                   TASK.c.use_cache, *(TASK.c[c] for c in ATTEMPT_FIELDS))
            .join_from(EXECUTION, TASK, EXECUTION.c.task_id == TASK.c.id)
            .where(EXECUTION.c.id.in_(IDS)))
CACHE_SOURCE = select(EXECUTION.c.status, EXECUTION.c.cache_key).where(EXECUTION.c.id == bindparam("id"))
WRITE_EXECUTION = (update(EXECUTION).where(EXECUTION.c.id == bindparam("_id"))
                   .values({c: bindparam(c) for c in EXECUTION_WRITTEN}))



def _changes(eid, current, status):
    """Whether a report of `status` changes an execution in status `current`: not when it
    was applied already (a retry) or is a resent start of what ended since; refused when
    the execution is over."""
    if status == current:
        return False
    if status == ExecutionStatus.RUNNING.value and current in ENDED:
        return False
    if not ExecutionStatus(current).is_active:
        raise Conflict(f"execution {eid} is {current}: report refused")
    return True


def _return_code(eid, status, rep):
    """The report's return code; a success must bring 0."""
    rc = rep.get("return_code")
    if status == ExecutionStatus.SUCCEEDED.value and rc != 0:
        raise BadRequest(f"execution {eid}: succeeded with return code {rc}")
    return rc


REASON = re.compile(r"[a-z_]{1,32}")         # matched whole
FINAL = (ExecutionStatus.SUCCEEDED.value, ExecutionStatus.FAILED.value)


class Reports:
    """One request's reports, decided on plain rows: each execution's row is changed in
    place, its task's move handed to lifecycle.Moves, and all written by write()."""

    def __init__(self, s, worker, outputs, execution_ids):
        self.s = s
        self.worker = worker
        self.outputs = outputs
        self.rows = {}
        if execution_ids:
            for row in s.connection().execute(REPORTED, {"ids": execution_ids}):
                self.rows[row.id] = dict(row._mapping)
        self.changed = {}       # execution id -> its row, as it is to be written
        self.moves = Moves()

    def apply(self, rep):
        ex = self.rows.get(rep["execution_id"])
        if ex is None:
            raise NotFound(f"no execution {rep['execution_id']}")
        if ex["worker_id"] != self.worker.id:
            raise Forbidden(f"execution {ex['id']} does not belong to worker {self.worker.name}")
        status = rep.get("status")
        if status == "signaled":
            self._signaled(ex, rep)
        elif not _changes(ex["id"], ex["status"], status):
            return
        elif status == ExecutionStatus.RUNNING.value:
            self._started(ex, rep, utcnow())
        elif status in FINAL:
            self._ended(ex, rep, status, utcnow())
        elif status == ExecutionStatus.RELEASED.value:
            self._released(ex)
        else:
            raise BadRequest(f"execution {ex['id']}: unknown report status {status!r}")
        self.changed[ex["id"]] = ex

    def _started(self, ex, rep, now):
        ex.update(status=ExecutionStatus.RUNNING.value, started_at=now, pid=_pid(rep))
        self.moves.event("execution.running", "execution", ex["id"], task_id=ex["task_id"], pid=ex["pid"])
        self.moves.start(ex["task_id"])

    def _ended(self, ex, rep, status, now):
        rc = _return_code(ex["id"], status, rep)
        reason = _reason(ex["id"], rep)
        if rep.get("cached_from") is not None:
            self._cached(ex, rep["cached_from"])
            reason = "cached"
        chunks = {stream: _chunk(rep[stream]) for stream in ("stdout", "stderr") if rep.get(stream)}
        if _brings_its_start(ex["status"], rep):
            self._started(ex, rep, now)
        for stream, (offset, data) in chunks.items():
            self.outputs.append(ex["id"], stream, offset, data)
        rc = rc if isinstance(rc, int) else None
        if status == ExecutionStatus.FAILED.value and reason is None:
            reason = "exit_code" if rc is not None and rc > 0 else "signal" if rc is not None else "error"
        asked = ex["signal"]
        ex.update(status=status, return_code=rc, error=_error(rep), reason=reason,
                  started_at=ex["started_at"] or now, ended_at=now, paused=False, signal=None,
                  stdout_bytes=self.outputs.size(ex["id"], "stdout"),
                  stderr_bytes=self.outputs.size(ex["id"], "stderr"))
        self.moves.event(f"execution.{status}", "execution", ex["id"], task_id=ex["task_id"],
                         return_code=rc, reason=reason, error=ex["error"])
        if status == ExecutionStatus.SUCCEEDED.value:
            self.moves.succeed(ex["task_id"])
        else:
            self._failed(ex, asked)

    def _failed(self, ex, asked):
        """What a failed execution means for its task: requeued when its batch was stopped
        to run again, failed for good when killed, else failed with retries."""
        if asked == "requeue":
            self.moves.give_back(ex["task_id"], "stopped with its batch and put back in the queue")
            return
        killed = asked == "kill" or ex["reason"] == "killed"
        if killed:
            why = "killed by user"
        else:
            why = ex["error"] or (f"exit code {ex['return_code']}" if ex["reason"] == "exit_code" else ex["reason"])
        self.moves.fail({**ex, "id": ex["task_id"]}, why, retry=not killed)

    def _cached(self, ex, cached_from):
        """An end that brings the cache's answer: the succeeded execution it names must have
        the same cache key (for a task with use_cache); its output is copied."""
        source = None
        if isinstance(cached_from, int) and not isinstance(cached_from, bool) and 0 < cached_from <= MAX_ID:
            source = self.s.connection().execute(CACHE_SOURCE, {"id": cached_from}).first()
        if source is None or source.status != ExecutionStatus.SUCCEEDED.value:
            raise BadRequest(f"execution {ex['id']}: cached_from names no succeeded execution")
        if not ex["use_cache"] or ex["cache_key"] is None or source.cache_key != ex["cache_key"]:
            raise Forbidden(f"execution {ex['id']}: cached_from {cached_from} is not the cache's answer "
                            "for it (same cache key, its task with use_cache)")
        self.outputs.copy(cached_from, ex["id"])
        ex["cached_from"] = cached_from

    def _released(self, ex):
        if ex["status"] != ExecutionStatus.ASSIGNED.value:
            raise Conflict(f"execution {ex['id']} is {ex['status']}: only an unstarted one can be released")
        ex.update(status=ExecutionStatus.RELEASED.value, ended_at=utcnow())
        self.moves.event("execution.released", "execution", ex["id"], task_id=ex["task_id"])
        self.moves.give_back(ex["task_id"])

    def _signaled(self, ex, rep):
        """The worker applied a signal: pause and resume are done; a kill is done when the
        execution ends (its final report)."""
        sig, seq = rep.get("signal"), rep.get("seq")
        if sig not in SIGNALS + ("requeue",) or not isinstance(seq, int):
            raise BadRequest(f"execution {ex['id']}: a signaled report needs a signal and its seq")
        if sig in ("pause", "resume") and ExecutionStatus(ex["status"]).is_active:
            ex["paused"] = sig == "pause"
            if ex["signal"] == sig and ex["signal_seq"] == seq:
                ex["signal"] = None
            self.moves.event(f"execution.{sig}d", "execution", ex["id"], task_id=ex["task_id"])

    def write(self):
        """Write what changed: the executions by one executemany, then the tasks' moves."""
        if self.changed:
            self.s.connection().execute(WRITE_EXECUTION, [
                {"_id": ex["id"], **{c: ex[c] for c in EXECUTION_WRITTEN}} for ex in self.changed.values()])
        self.moves.write(self.s)


def _pid(rep):
    pid = rep.get("pid")
    return pid if isinstance(pid, int) else None


def _brings_its_start(current, rep):
    """An end reported with a pid for an execution not yet known to run: the worker folded
    its start into it (the task ended before its start was sent), so the start is recorded
    first, as if reported alone."""
    return current == ExecutionStatus.ASSIGNED.value and _pid(rep) is not None


def _reason(execution_id, rep):
    reason = rep.get("reason")
    if reason is not None and (not isinstance(reason, str) or not REASON.fullmatch(reason)):
        raise BadRequest(f"execution {execution_id}: reason must be a short word (a-z and _)")
    return reason


def _error(rep):
    """A worker's own words (a process's message): kept, but PostgreSQL stores no NUL."""
    return (rep.get("error") or None) and str(rep["error"]).replace("\x00", "\\0")[:1024]


def _chunk(chunk):
    """(offset, bytes) of an inline output chunk {"offset": n, "data": base64}."""
    offset = chunk.get("offset") if isinstance(chunk, dict) else None
    if not isinstance(offset, int) or offset < 0 or not isinstance(chunk.get("data"), str):
        raise BadRequest('an output chunk is {"offset": n >= 0, "data": base64 text}')
    try:
        return offset, base64.b64decode(chunk["data"], validate=True)
    except binascii.Error as exc:
        raise BadRequest("output chunk is not valid base64") from exc
