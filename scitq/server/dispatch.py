"""The despot: assigns pending tasks to workers, and takes work back from silent ones.

One dispatcher thread per server. It wakes when a task is added, an execution ends, a
worker asks or changes, and otherwise once a `tick`. Each pass fills every running worker
up to concurrency + prefetch, oldest task first; claims use FOR UPDATE SKIP LOCKED on
PostgreSQL so a second dispatcher (another server process) never takes the same task.

Under load a worker fills itself: its reports ask for `more`, and `claim_for` claims its
next tasks in the reports' own transaction, so the answer brings them (no pass, no
notification, no poll in between). Passes serve idle workers and everything else.
"""
import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import bindparam, case, func, literal_column, or_, select, update
from sqlalchemy.exc import OperationalError

from scitq.server import dialect, lifecycle
from scitq.server.db import add_events, event_row, insert_with_ids, lock_in, record
from scitq.server.heard import Heard
from scitq.server.loop import Loop
from scitq.server.models import AHEAD, Batch, Execution, Task, Worker, ahead, utcnow
from scitq.status import BatchStatus, ExecutionStatus, TaskStatus, WorkerStatus

log = logging.getLogger(__name__)

ACTIVE = (ExecutionStatus.ASSIGNED.value, ExecutionStatus.RUNNING.value)
TASK, EXECUTION, BATCH, WORKER = (m.__table__ for m in (Task, Execution, Batch, Worker))

# The statements of every pass and every inline claim, built once: SQLAlchemy then neither
# rebuilds them nor computes their cache keys again each time.
_ids = bindparam("ids", expanding=True)
CAPPED_BATCHES = select(BATCH.c.id, BATCH.c.concurrency).where(
    BATCH.c.concurrency.is_not(None), BATCH.c.status == BatchStatus.ACTIVE.value)
BUSY_IN_BATCHES = (select(TASK.c.batch_id, func.count())
                   .where(TASK.c.batch_id.in_(_ids),
                          TASK.c.status.in_([TaskStatus.ASSIGNED.value, TaskStatus.RUNNING.value]))
                   .group_by(TASK.c.batch_id))
# pending tasks, oldest first, of open batches not `full`, none of `taken`, at most n: a
# walk of ix_task_pending (only pending tasks) that stops at n. Without that index, with
# most tasks pending when the statistics were made, PostgreSQL walked the primary key,
# through every task already done (1,650 pages a claim after 20,000 tasks). 'pending' is
# written in the statement, not bound: a plan made for any value (PostgreSQL's generic plan
# of a prepared statement, SQLite's) could not know that the partial index applies.
CLAIM_ANY = (select(TASK.c.id, TASK.c.batch_id)
             .where(TASK.c.status == literal_column(f"'{TaskStatus.PENDING.value}'"),
                    TASK.c.batch_id.in_(select(BATCH.c.id).where(BATCH.c.status == BatchStatus.ACTIVE.value)),
                    or_(TASK.c.not_before.is_(None), TASK.c.not_before <= bindparam("now")),
                    TASK.c.batch_id.not_in(bindparam("full", expanding=True)),
                    TASK.c.id.not_in(bindparam("taken", expanding=True)))
             .order_by(TASK.c.id).limit(bindparam("n"))
             .with_for_update(skip_locked=True))
# What an inline claim reads first, in one round trip: what the worker holds (by worker id:
# the index on (worker_id, status) answers without reading the history of executions), and
# whether a batch with a cap is active (only then is its room counted).
_HELD = (select(func.count()).select_from(EXECUTION)
         .where(EXECUTION.c.worker_id == bindparam("worker_id"), EXECUTION.c.status.in_(ACTIVE))
         .scalar_subquery())
HELD_AND_CAPPED = select(_HELD, CAPPED_BATCHES.exists())
ACTIVE_COUNT = (select(func.count()).select_from(EXECUTION)
                .where(EXECUTION.c.worker_id == WORKER.c.id, EXECUTION.c.status.in_(ACTIVE))
                .correlate(WORKER).scalar_subquery())
# The running workers a pass may fill (room: concurrency + prefetch, or + depth when it sizes
# its own, above what it holds), and those marked idle (the pass clears the mark of those
# given work), with what each holds; the index on (worker_id, status) counts each.
PASS_WORKERS = (select(WORKER.c.id, WORKER.c.name, WORKER.c.concurrency, WORKER.c.prefetch,
                       WORKER.c.depth, WORKER.c.batch_id, WORKER.c.idle_since,
                       ACTIVE_COUNT.label("active"))
                .where(WORKER.c.status == WorkerStatus.RUNNING.value,
                       or_(WORKER.c.idle_since.is_not(None),
                           WORKER.c.concurrency + AHEAD > ACTIVE_COUNT))
                .order_by(WORKER.c.id).with_for_update(of=WORKER, skip_locked=True))
CLAIM_BATCH = CLAIM_ANY.where(TASK.c.batch_id == bindparam("of_batch"))     # a worker of one batch
# What a worker needs to run a task, as the statements that take tasks return them (no read
# after a claim) and as a poll's look reads them: the task's id first.
TASK_ASSIGNED = (TASK.c.id, TASK.c.name,
                 select(BATCH.c.name).where(BATCH.c.id == TASK.c.batch_id).scalar_subquery(),
                 *(TASK.c[name] for name in ("command", "shell", "attempt", "timeout", "staging_timeout",
                                             "container", "container_options", "inputs", "resources",
                                             "output", "use_cache")))
_TAKEN = dict(status=TaskStatus.ASSIGNED.value, attempt=TASK.c.attempt + 1, not_before=None,
              updated_at=bindparam("now"))
TASKS_ASSIGNED = update(TASK).where(TASK.c.id.in_(_ids)).values(**_TAKEN).returning(*TASK_ASSIGNED)
# With no capped batch active, a claim takes its tasks in the same statement that picks them
# (one round trip, not two): UPDATE ... WHERE id IN (the claim) RETURNING what runs them.
TAKE_ANY, TAKE_BATCH = (
    update(TASK).where(TASK.c.id.in_(claim.with_only_columns(TASK.c.id).scalar_subquery()))
    .values(**_TAKEN).returning(*TASK_ASSIGNED)
    for claim in (CLAIM_ANY, CLAIM_BATCH))


# A report's inline claim, in one statement while tasks are pending and no batch has a cap:
# the worker's room (`cap` less what it holds, counted after its row is locked, in the
# statement's own snapshot) is the LIMIT of the claim that takes them.
_ROOM = case((bindparam("cap") - _HELD > 0, bindparam("cap") - _HELD), else_=0)
TAKE_ANY_FOR, TAKE_BATCH_FOR = (
    update(TASK).where(TASK.c.id.in_(claim.with_only_columns(TASK.c.id).limit(_ROOM)
                                     .where(~CAPPED_BATCHES.exists()).scalar_subquery()))
    .values(**_TAKEN).returning(*TASK_ASSIGNED)
    for claim in (CLAIM_ANY, CLAIM_BATCH))


ASSIGNMENT_FIELDS = ("execution_id", "task_id", "name", "batch", "command", "shell", "attempt",
                     "timeout", "staging_timeout", "container", "container_options", "inputs",
                     "resources", "output", "use_cache")
ASSIGNMENTS = (select(EXECUTION.c.id, *TASK_ASSIGNED)
               .select_from(EXECUTION.join(TASK, EXECUTION.c.task_id == TASK.c.id))
               .where(EXECUTION.c.id.in_(_ids)).order_by(EXECUTION.c.id))


def assignments(s, execution_ids):
    """What a worker needs to run these executions, in their order."""
    if not execution_ids:
        return []
    rows = s.connection().execute(ASSIGNMENTS, {"ids": list(execution_ids)})
    return [dict(zip(ASSIGNMENT_FIELDS, row)) for row in rows]


class Notifier:
    """Wakes the long polls of workers when something for them changed (in this process)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._conds = {}
        self._versions = {}
        self._delivered = {}    # worker id -> execution ids given in reports answers
        self._handed = {}       # worker id -> assignments a pass made, for its waiting poll
        self.closing = False
        self._ended = threading.Condition()     # batch waits: tasks ended (or went away)
        self._ends = 0

    def _cond(self, worker_id):
        with self._lock:
            cond = self._conds.get(worker_id)
            if cond is None:
                cond = self._conds[worker_id] = threading.Condition()
                self._versions[worker_id] = 0
            return cond

    def version(self, worker_id):
        with self._cond(worker_id):
            return self._versions[worker_id]

    def notify(self, *worker_ids):
        for wid in worker_ids:
            cond = self._cond(wid)
            with cond:
                self._versions[wid] += 1
                cond.notify_all()

    def wait(self, worker_id, seen, timeout):
        """Block until notify(worker_id) happens after version `seen`, or timeout."""
        cond = self._cond(worker_id)
        with cond:
            return cond.wait_for(lambda: self._versions[worker_id] != seen or self.closing, timeout)

    def hand(self, handed):
        """A pass's new assignments ({worker id: [assignment]}), for the workers' waiting
        polls to answer with as they are, without reading them again (a poll that is not
        waiting finds them in its first look, which drops these: see take)."""
        with self._lock:
            for wid, items in handed.items():
                self._handed.setdefault(wid, []).extend(items)
        self.notify(*handed)

    def take(self, worker_id):
        """The assignments handed to the worker since its last take (and forgets them)."""
        with self._lock:
            return self._handed.pop(worker_id, [])

    def delivered(self, worker_id, execution_ids):
        """These executions went to the worker in a reports answer: its polls need not
        give them again (each poll would, else, answer at once with what the worker's
        reports just took, and go round again)."""
        with self._lock:
            self._delivered.setdefault(worker_id, set()).update(execution_ids)

    def undelivered(self, worker_id, execution_ids, live):
        """Those of these executions a poll still has to give; forgets the deliveries no
        longer live."""
        with self._lock:
            sent = self._delivered.get(worker_id)
            if not sent:
                return execution_ids
            sent &= live
            return [eid for eid in execution_ids if eid not in sent]

    def tasks_ended(self):
        """Tasks ended or were taken out of a batch in this process: batch waits look again."""
        with self._ended:
            self._ends += 1
            self._ended.notify_all()

    def ends(self):
        return self._ends

    def wait_ends(self, seen, timeout):
        """Block until tasks_ended() happens after `seen`, or timeout; whether it did."""
        with self._ended:
            return self._ended.wait_for(lambda: self._ends != seen or self.closing, timeout)

    def close(self):
        """The server stops: every waiting poll and batch wait answers now."""
        self.closing = True
        with self._lock:
            workers = list(self._conds)
        self.notify(*workers)
        self.tasks_ended()


class Dispatcher(Loop):
    name = "dispatcher"
    tick = 1.0          # seconds between passes when nothing wakes it
    lease = 90.0        # seconds a worker may stay silent before its work is given back
    sweep_every = 5.0   # seconds between lease sweeps
    min_gap = 0.1       # seconds between passes for wake-ups that may wait (see wake)

    def __init__(self, db, notifier, lease=None):
        super().__init__()
        self.db = db
        self.notifier = notifier
        if lease is not None:
            self.lease = lease
        self._last_sweep = 0.0
        self.heard = Heard()        # when workers were last heard, written here (see write_heard)
        self._last_heard = 0.0
        # No worker can be heard while this server is down or its database unreachable: a
        # worker's silence counts against its lease only from when it could have been heard.
        self._heard_since = time.monotonic()
        self._last_pass = 0.0
        self._hurry = False
        self._new_tasks = 0          # submitted since the task table's statistics were made
        self._task_rows = 0.0        # the table's size as those statistics say
        self._stats_lock = threading.Lock()

    @staticmethod
    def observe(seconds):
        """Told how long each pass took (the server sets its metrics' histogram here)."""

    def wake(self, at_once=True):
        """Ask for a pass. at_once=False: it may wait until `min_gap` after the previous
        pass, to serve the wake-ups of that time together (for workers that have tasks
        queued: the reports of their ended tasks come in a stream)."""
        if at_once:
            self._hurry = True
        super().wake()

    def step(self):
        # Under load, wake-ups that may wait come in streams: one pass serves all those of
        # `min_gap` seconds, so each pass assigns many tasks instead of one. A wake-up that
        # may not wait (a submission, a worker with a slot idle) ends the wait at once.
        deadline = self._last_pass + self.min_gap
        while not self._hurry and (left := deadline - time.monotonic()) > 0:
            self._wake.wait(left)   # a wake-up ends the wait early: then go on if it hurries
            self._wake.clear()      # this pass serves the wake-ups that came meanwhile
        self._hurry = False
        try:
            now = time.monotonic()
            if now - self._last_sweep >= self.sweep_every and now - self._heard_since >= self.lease:
                self.sweep()
                self._last_sweep = self._last_heard = time.monotonic()
            elif now - self._last_heard >= min(1.0, self.lease / 10):
                self.write_heard()
            self._last_pass = time.monotonic()
            self.fresh_statistics()
            started = time.monotonic()
            self.dispatch()
            self.observe(time.monotonic() - started)
        except OperationalError:
            self._heard_since = time.monotonic()    # heartbeats cannot be written either
            raise

    analyze_at = 1000       # tasks submitted, at least, that make the statistics stale
    analyze_share = 0.1     # ...and this share of the table

    def tasks_added(self, n):
        """n tasks were submitted (the pass this wakes brings the statistics up to date)."""
        with self._stats_lock:
            self._new_tasks += n

    def fresh_statistics(self):
        """ANALYZE the task table when many tasks came since its statistics were made.

        PostgreSQL plans each claim from those statistics. Believing few tasks pending while
        many are, it reads every pending task of the open batches and sorts them, for each
        claim of a handful (measured: 7 ms a claim with 20,000 pending, 0.04 ms after
        ANALYZE, which then walks the index in id order). Autovacuum analyzes only at its
        next round, up to a minute later: a big submission would be served by the slow plan
        until then. Returns whether it analyzed."""
        with self._stats_lock:
            new = self._new_tasks
            if self.db.is_sqlite or new < max(self.analyze_at, self.analyze_share * self._task_rows):
                return False
            self._new_tasks = 0
        try:
            with self.db.write() as s:
                self._task_rows = dialect.analyze(s, TASK, lock_timeout="2s")   # never hold passes up long
        except OperationalError as exc:     # autovacuum holds the table: at the next pass
            log.info("ANALYZE task: %s", exc.orig or exc)
            self.tasks_added(new)
            return False
        return True

    def dispatch(self):
        """One pass: returns {worker_id: number of executions assigned}."""
        with self.db.write() as s:
            # With a capped batch, caps are counted under the lock (a report's inline claim in
            # such a batch takes it too, without waiting). It waits while such a claim holds it:
            # that is a few milliseconds, and this holds no row yet, so nothing waits on it.
            conn = s.connection()
            room = self._batch_room(conn)
            if room and not self.db.is_sqlite:
                lock_in(s, "dispatch")
                room = self._batch_room(conn)
            # A worker whose reports are being applied (its row is locked) fills itself in
            # their transaction (claim_for): this pass leaves it alone.
            # Only the workers with room, or marked idle: a full worker has nothing to gain
            # from a pass. Locking and counting every worker made each pass cost in proportion
            # to the fleet (15% of the server's time while 1,000 workers came up), and held
            # every worker's row, which its reports wait for, as long.
            workers = conn.execute(PASS_WORKERS).all()
            if not workers:
                return {}
            active = {w.id: w.active for w in workers if w.active}
            now = utcnow()
            made = self._assign(s, workers, active, room, now)
            _mark_idle(s, workers, made, active, now)
        if made:
            # Each waiting poll answers with its worker's new assignments as they are, without
            # reading them again (a read transaction of an idle worker's submit-to-start).
            self.notifier.hand(made)
        return {wid: len(handed) for wid, handed in made.items()}

    def claim_for(self, s, worker):
        """Fill one worker now, in the caller's transaction: a worker reporting ended tasks
        takes its next ones in the answer, without waiting for a pass, a notification and
        its poll. The caller holds the worker's row locked (FOR UPDATE), so no pass fills
        it meanwhile; SKIP LOCKED keeps two claims off the same tasks. Under load it is one
        statement (TAKE_ANY_FOR: the worker's room is its LIMIT).

        Returns the new assignments (as a poll gives them), or None when a batch with a cap
        is active and a pass holds the dispatch lock: caps are counted under that lock, and
        waiting for it while holding rows could deadlock, so then the caller wakes the
        dispatcher, which fills the worker as usual."""
        if worker.status != WorkerStatus.RUNNING.value:
            return []
        conn, now = s.connection(), utcnow()
        params = {"worker_id": worker.id, "cap": worker.concurrency + ahead(worker), "now": now,
                  "of_batch": worker.batch_id, "full": [], "taken": []}
        rows = conn.execute(TAKE_ANY_FOR if worker.batch_id is None else TAKE_BATCH_FOR, params).all()
        if rows:        # the common case under load: room, tasks pending, no cap
            claims = self._executions(s, [(worker, sorted(row[0] for row in rows))],
                                      {row[0]: row for row in rows}, now)
        else:           # full, nothing pending, or a capped batch: see which
            claims = self._claim_capped(s, conn, worker, now)
            if claims is None:
                return None
        if claims and worker.idle_since is not None:
            worker.idle_since = None
        return claims.get(worker.id, [])

    def _claim_capped(self, s, conn, worker, now):
        """claim_for when its one-statement claim took nothing: {} when the worker is full or
        no batch has a cap, else a claim within the caps (None: a pass holds the lock)."""
        held, capped = conn.execute(HELD_AND_CAPPED, {"worker_id": worker.id}).one()
        if held >= worker.concurrency + ahead(worker):
            return {}       # full (a start reported, the next task queued): nothing to count
        room = self._batch_room(conn) if capped else {}
        if not room:
            return {}
        if not self.db.is_sqlite:
            if not lock_in(conn, "dispatch", wait=False):
                return None
            room = self._batch_room(conn)       # as counted under the lock
        return self._assign(s, [worker], {worker.id: held} if held else {}, room, now)

    def _assign(self, s, workers, active, room, now):
        """Claim pending tasks for these workers (up to concurrency + prefetch each, oldest
        first, within the `room` of capped batches) and make their executions and events.
        Returns {worker id: [assignment]}, each as a poll gives it.

        Its statements are Core ones on the tables, on the session's connection: the same
        statements naming ORM classes cost several times more Python (a report's inline
        claim runs them for a handful of tasks at a time)."""
        conn = s.connection()
        taken = {}      # task id -> what runs it (TASK_ASSIGNED), as the statement taking it returned
        claims = self._claims(conn, workers, active, room, now, taken)
        if not claims:
            return {}
        if room:        # the claims only picked them (see _claim)
            taken = {row[0]: row for row in conn.execute(
                TASKS_ASSIGNED, {"ids": [tid for _, ids in claims for tid in ids], "now": now})}
        return self._executions(s, claims, taken, now)

    @staticmethod
    def _executions(s, claims, taken, now):
        """The executions and events of tasks taken ([(worker, task ids)]; `taken`: task id
        -> its TASK_ASSIGNED row). Returns {worker id: [assignment]}."""
        conn = s.connection()
        new = [{"task_id": tid, "worker_id": w.id, "worker_name": w.name,
                "status": ExecutionStatus.ASSIGNED.value, "assigned_at": now,
                "stdout_bytes": 0, "stderr_bytes": 0, "signal_seq": 0,
                "paused": False} for w, ids in claims for tid in ids]
        rows = list(zip(insert_with_ids(conn, EXECUTION, new), (row["task_id"] for row in new)))
        owners = [w for w, ids in claims for _ in ids]
        add_events(s, [event_row("execution.assigned", "execution", eid, {"task_id": tid, "worker": w.name}, now)
                       for (eid, tid), w in zip(rows, owners)])
        out = {}
        for (eid, tid), w in zip(rows, owners):
            out.setdefault(w.id, []).append(dict(zip(ASSIGNMENT_FIELDS, (eid, *taken[tid]))))
        return out

    def _claims(self, conn, workers, active, room, now, taken):
        """[(worker, task ids)], in worker order: for each, up to concurrency + prefetch
        pending tasks, oldest first, within the room of capped batches (`taken`: see _claim)."""
        claims = []
        exhausted = False       # no pending task left for workers without a batch
        for group in _groups(workers):
            w = group[0]
            free = [max(g.concurrency + ahead(g) - active.get(g.id, 0), 0) for g in group]
            if not sum(free) or (exhausted and w.batch_id is None):
                continue
            ids = self._claim(conn, w, sum(free), room, now,
                              [tid for _, mine in claims for tid in mine], taken)
            if w.batch_id is None and len(ids) < sum(free):
                exhausted = True
            for g, n in zip(group, free):   # oldest first, to the first workers first
                if ids[:n]:
                    claims.append((g, ids[:n]))
                ids = ids[n:]
        return claims

    @staticmethod
    def _claim(conn, w, free, room, now, picked, taken):
        """Up to `free` pending task ids for worker w, oldest first, within batch caps,
        but none of `picked` (claimed earlier in this pass, and still pending until its end).
        With no capped batch (no `room` to count), they are taken (assigned) at once, and
        what runs them goes in `taken` (task id -> row)."""
        if not room:        # what this pass took earlier is assigned already: none is picked
            params = {"n": free, "now": now, "of_batch": w.batch_id, "full": [], "taken": []}
            rows = conn.execute(TAKE_ANY if w.batch_id is None else TAKE_BATCH, params).all()
            taken.update((row[0], row) for row in rows)
            return sorted(row[0] for row in rows)
        ids = []
        for _ in range(3):      # a capped batch can fill up midway: then look past it
            claim = CLAIM_ANY if w.batch_id is None else CLAIM_BATCH
            params = {"n": free - len(ids), "now": now, "of_batch": w.batch_id,
                      "full": [bid for bid, n in room.items() if n <= 0], "taken": [*picked, *ids]}
            skipped = False
            rows = conn.execute(claim, params).all()
            for tid, bid in rows:
                if bid in room:
                    if room[bid] <= 0:
                        skipped = True
                        continue
                    room[bid] -= 1
                ids.append(tid)
            if not skipped or len(ids) >= free:
                return ids
        return ids

    @staticmethod
    def _batch_room(conn):
        """{batch id: tasks it may still start} for the active batches with a cap (they are
        few: the common case is one query on the batch table)."""
        capped = dict(conn.execute(CAPPED_BATCHES).all())
        if not capped:
            return {}
        busy = dict(conn.execute(BUSY_IN_BATCHES, {"ids": list(capped)}).all())
        return {bid: cap - busy.get(bid, 0) for bid, cap in capped.items()}

    def write_heard(self):
        """Write when the workers this process heard were last heard (see scitq.server.heard)."""
        self._last_heard = time.monotonic()
        with self.db.write() as s:
            self.heard.write(s)

    def sweep(self):
        """Workers silent for longer than the lease are lost; their tasks go back to pending.
        Another server process sweeping meanwhile: it does it (once, not twice over). What
        this process heard is written first."""
        self.write_heard()
        cutoff = utcnow() - timedelta(seconds=self.lease)
        with self.db.write() as s:
            if not lock_in(s, "lease_sweep", wait=False):
                return 0
            stale = s.scalars(select(Worker).where(
                Worker.status.in_([WorkerStatus.RUNNING.value, WorkerStatus.PAUSED.value,
                                   WorkerStatus.DRAINING.value]),
                Worker.last_seen < cutoff)).all()
            for worker in stale:
                worker.status = WorkerStatus.LOST.value
                n = lifecycle.give_back(s, worker.id, "worker lost: silent for longer than its lease")
                record(s, "worker.lost", worker, executions=n)
                log.warning("worker %s lost; %d task(s) given back", worker.name, n)
        if stale:
            self.wake()
        return len(stale)


def _mark_idle(s, workers, made, active, now):
    """Since when a worker runs nothing (recruitment tears idle hosts down): set for the
    workers of a pass left with nothing, cleared for those that run something (claim_for
    clears it too, for those it fills)."""
    busy = [w.id for w in workers if w.idle_since is not None and (w.id in made or active.get(w.id))]
    idle = [w.id for w in workers if w.idle_since is None and w.id not in made and not active.get(w.id)]
    for ids, value in ((busy, None), (idle, now)):
        if ids:
            s.connection().execute(update(WORKER).where(WORKER.c.id.in_(ids)).values(idle_since=value))


def _groups(workers):
    """The workers in order, in groups that claim together: a worker of a batch alone,
    consecutive workers without a batch in one group (one query for them all)."""
    group = []
    for w in workers:
        if w.batch_id is not None:
            if group:
                yield group
                group = []
            yield [w]
        else:
            group.append(w)
    if group:
        yield group
