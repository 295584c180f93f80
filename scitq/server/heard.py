"""When each worker was last heard, kept in memory and written for all workers at once.

A worker's calls prove it alive; the lease sweep gives back the work of one silent for longer
than the lease. Writing `last_seen` in the call that heard it cost a statement in most of a
busy fleet's reports and a write transaction in most of its polls: at 1,000 workers, about
200 writes a second, each holding the worker's row. Calls now note it here, and the
dispatcher writes the notes of every worker by one statement about once a second, and
before each sweep, so a sweep in this process never judges a worker by a stale time. A
worker marked lost is still brought back by its next call at once (worker_calls.heartbeat).
"""
import math
import threading

from sqlalchemy import bindparam, func, update

from scitq.server.models import Worker, utcnow

WORKER = Worker.__table__
STATS = ("load", "memory", "disk")
HEARD = (update(WORKER).where(WORKER.c.id == bindparam("_id"), WORKER.c.last_seen < bindparam("at"))
         .values(last_seen=bindparam("at"),
                 **{k: func.coalesce(bindparam(k), WORKER.c[k]) for k in STATS}))


def clean_stats(stats):
    """{load, memory, disk} of a worker's stats that are numbers: JSON from Python may say
    NaN or Infinity, which is no load, and no JSON to answer with."""
    out = {}
    for key in STATS:
        value = (stats or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class Heard:
    def __init__(self):
        self._lock = threading.Lock()
        self._notes = {}        # worker id -> {"_id", "at", load, memory, disk}

    def note(self, worker_id, stats=None):
        """The worker was heard now (with these stats, if it sent any)."""
        with self._lock:
            note = self._notes.get(worker_id) or {"_id": worker_id, **dict.fromkeys(STATS)}
            note.update(clean_stats(stats), at=utcnow())
            self._notes[worker_id] = note

    def write(self, s):
        """Write the notes taken since the last write, in the caller's transaction, by one
        statement (an executemany); returns how many workers it wrote."""
        with self._lock:
            notes, self._notes = list(self._notes.values()), {}
        if notes:
            s.connection().execute(HEARD, notes)
        return len(notes)
