"""Workers: registration, the long poll that hands them work, their reports, and settings."""
import contextlib
import math
import random
import threading
import time

from flask_restx import Namespace, Resource, fields
from sqlalchemy import select

from scitq.errors import BadRequest, Overloaded
from scitq.server import worker_calls, tokens
from scitq.server.access import access
from scitq.server.api import (ERROR_FIELDS, ID, NullableFloat, NullableInteger, NullableList,
                              NullableString, principal, state)
from scitq.server.api.bodycheck import compile_model
from scitq.server.api.tasks import how_it_runs
from scitq.server.db import lookup
from scitq.server.dispatch import assignments
from scitq.server.models import MAX_ID, MAX_INT, Worker, ahead
from scitq.status import WorkerStatus

ns = Namespace("workers", description="Worker processes, their settings and their work")

MAX_WAIT = 60.0          # seconds a poll may hang
# Seconds between looks at the database while a poll hangs and nothing woke it: longer than
# a poll, so a poll looks when it starts and when it is woken. This process wakes the polls
# of everything it changes (assignments, settings, signals); a change made by another
# server process on the same database is seen at the worker's next poll. A thousand waiting
# polls looked every 5 s cost 200 reads a second for nothing.
RECHECK = 30.0

PREFETCH = ("tasks it takes beyond its concurrency, ready to start; null (the default): the "
            "worker sizes that from its tasks' durations and its round trips, and says `depth`")
DEPTH = fields.Integer(min=0, max=worker_calls.MAX_CONCURRENCY, description="with prefetch null: "
                       "how many tasks beyond its concurrency the worker wants now")
class Admission:
    """Worker calls (registrations, reports, a poll's looks) run `running` at once at most;
    the others wait parked, up to `waiting` of them, and past that are refused with a 503
    and a Retry-After spread over a few seconds. Hundreds of workers reporting together
    would, else, each take the CPU in turn between two steps of a user's read (it waited a
    second), and a fleet larger than the machine can serve would queue without end.

    A worker none of whose calls got in for `overdue` seconds (the server passes a third of
    the lease) waits even past that cap: at 1,000 workers on 2 cores, refusals drawn at
    random kept a few workers out for a whole lease, and they were marked lost."""

    def __init__(self, running=8, waiting=512):
        self._slots = threading.BoundedSemaphore(running)
        self._lock = threading.Lock()
        self.waiting, self.max_waiting, self.refused = 0, waiting, 0
        self._since = time.monotonic()
        self._admitted = {}         # worker id -> when a call of it last got in

    @contextlib.contextmanager
    def __call__(self, worker_id=None, overdue=None):
        self._enter(worker_id, overdue)
        try:
            yield self
        finally:
            self._slots.release()

    def _enter(self, worker_id, overdue):
        if not self._slots.acquire(blocking=False):
            with self._lock:
                late = overdue is not None and worker_id is not None and \
                    time.monotonic() - self._admitted.get(worker_id, self._since) >= overdue
                if self.waiting >= self.max_waiting and not late:
                    self.refused += 1
                    raise Overloaded(f"{self.waiting} worker calls wait already: retry later",
                                     retry_after=random.randint(5, 15))
                self.waiting += 1
            try:
                self._slots.acquire()
            finally:
                with self._lock:
                    self.waiting -= 1
        if worker_id is not None:
            self._admitted[worker_id] = time.monotonic()


WORKER_CALLS = Admission()
error = ns.model("Error", ERROR_FIELDS)
worker = ns.model("Worker", {
    "id": fields.Integer, "name": fields.String, "hostname": NullableString,
    "status": fields.String, "concurrency": fields.Integer,
    "prefetch": NullableInteger(description=PREFETCH),
    "depth": fields.Integer(description="tasks it holds beyond its concurrency now"),
    "batch": NullableString(description="it only takes tasks of this batch (null: any)"),
    "cpus": NullableInteger, "version": NullableString,
    "load": NullableFloat(description="null until it reports"), "memory": NullableFloat,
    "disk": NullableFloat,
    "running": fields.Integer(description="executions assigned or running"),
    "last_seen": fields.String, "created_at": fields.String,
    "set_on_server": fields.Raw(description="the settings given to it here ({name: value} of "
                                "concurrency, prefetch, batch, status): a process that registers "
                                "again under its name keeps them, its own flags fill in the rest"),
})
register_in = ns.model("WorkerRegistration", {
    "name": fields.String(required=True, min_length=1, max_length=128, pattern=r"^(?!\d+$)[^/\s]+$",
                          description="no '/' nor spaces, not digits alone (those name ids)"),
    "hostname": fields.String(max_length=255),
    "concurrency": fields.Integer(min=1, max=worker_calls.MAX_CONCURRENCY, default=1),
    "prefetch": NullableInteger(min=0, max=worker_calls.MAX_CONCURRENCY, description=PREFETCH),
    "depth": DEPTH,
    "batch": fields.String(max_length=128),
    "cpus": fields.Integer(min=1, max=MAX_INT),
    "version": fields.String(max_length=32),
})
settings_in = ns.model("WorkerSettings", {
    "concurrency": fields.Integer(min=1, max=worker_calls.MAX_CONCURRENCY),
    "prefetch": NullableInteger(min=0, max=worker_calls.MAX_CONCURRENCY, description=PREFETCH),
    "status": fields.String(enum=[s.value for s in worker_calls.SETTABLE_STATUSES]),
    "batch": NullableString(max_length=128, description="only take tasks of this batch (null: any)"),
})
stats = ns.model("WorkerStats", {"load": fields.Float, "memory": fields.Float, "disk": fields.Float})
poll_in = ns.model("Poll", {
    "known": fields.List(fields.Integer(min=1, max=MAX_ID), description="execution ids the worker holds already"),
    "wait": fields.Float(min=0, max=MAX_WAIT, default=20, description="seconds to wait for work"),
    "concurrency": fields.Integer, "prefetch": NullableInteger, "depth": DEPTH,
    "status": fields.String, "stats": fields.Nested(stats),
    "signaled": fields.List(fields.List(fields.Integer), description="[execution id, seq] of "
                            "signals the worker applied already (not sent again)"),
})
assignment = ns.model("Assignment", {
    "execution_id": fields.Integer, "task_id": fields.Integer, "name": NullableString,
    "batch": fields.String, "command": fields.String, "shell": fields.Boolean,
    "attempt": fields.Integer, **how_it_runs,
    "inputs": NullableList(fields.String), "resources": NullableList(fields.String),
})
signal = ns.model("Signal", {"execution_id": fields.Integer, "signal": fields.String,
                             "seq": fields.Integer})
poll_out = ns.model("PollAnswer", {
    "assignments": fields.List(fields.Nested(assignment)),
    "signals": fields.List(fields.Nested(signal)),
    "gone": fields.List(fields.Integer, description="executions it holds that are no longer its "
                                                    "(given back while it was silent): stop them"),
    "concurrency": fields.Integer, "prefetch": NullableInteger, "status": fields.String,
})
chunk = ns.model("OutputChunk", {"offset": fields.Integer(min=0, required=True),
                                 "data": fields.String(required=True, description="base64")})
report = ns.model("Report", {
    "execution_id": fields.Integer(required=True),
    "status": fields.String(required=True, enum=["running", "succeeded", "failed", "released",
                                                 "signaled"]),
    "pid": fields.Integer(description="the process started: with status running, or with the end "
                          "of an execution not yet reported running (its start is recorded first)"),
    "return_code": fields.Integer, "error": fields.String(max_length=4096),
    "reason": fields.String(max_length=32, description="why it failed: timeout, killed, staging..."),
    "signal": fields.String(enum=["kill", "pause", "resume", "requeue"],
                            description="with status signaled: the signal applied"),
    "seq": fields.Integer(description="with status signaled: the seq of that signal"),
    "cached_from": fields.Integer(description="the execution whose result was reused"),
    "stdout": fields.Nested(chunk, skip_none=True), "stderr": fields.Nested(chunk, skip_none=True),
})
reports_in = ns.model("Reports", {
    "reports": fields.List(fields.Nested(report), default=[]),
    "queued": fields.Integer(min=0, description="executions it holds that have not started "
                             "(while they are half its prefetch or more, the next dispatch may "
                             "wait up to 0.1 s and serve several reports; else it is made at once)"),
    "status": fields.String(enum=["draining", "offline"],
                            description="the worker's own news: it drains, or it exits"),
    "depth": DEPTH,
    "more": fields.Boolean(description="fill it up in the answer: new assignments, up to its "
                           "concurrency + prefetch (else a dispatch pass gives them to its poll)"),
})
refusal = ns.model("Refusal", {"execution_id": fields.Integer, "error": fields.String,
                               "status": fields.Integer})
deleted = ns.model("WorkerDeleted", {
    "deleted": fields.Integer(description="its id"),
    "given_back": fields.Integer(description="executions it held, put back in the queue")})
reports_out = ns.model("ReportsAnswer", {
    "acked": fields.List(fields.Integer), "refused": fields.List(fields.Nested(refusal)),
    "assignments": fields.List(fields.Nested(assignment), description="with more: new "
                               "executions for it, as a poll would give them (it polls as well)")})

# The two calls every worker makes all the time: their bodies are checked against the same
# models by compiled checks (scitq.server.api.bodycheck), and their answers are built as
# plain JSON (what the models describe), not marshalled field by field.
check_poll = compile_model(poll_in)
check_reports = compile_model(reports_in)


def find_worker(s, ref):
    return lookup(s, Worker, ref)


def worker_dict(s, w):
    return w.to_dict(running=worker_calls.running_counts(s, [w.id]).get(w.id, 0))


@ns.route("")
@access("user", write="worker")
class Workers(Resource):
    @ns.marshal_list_with(worker)
    def get(self):
        with state().db.read() as s:
            workers = s.scalars(select(Worker).order_by(Worker.id)).all()
            # named, so that the (worker_id, status) index is used, not a scan of executions
            running = worker_calls.running_counts(s, [w.id for w in workers])
            return [w.to_dict(running=running.get(w.id, 0)) for w in workers]

    @ns.response(400, "Invalid registration", error)
    @ns.expect(register_in, validate=True)
    @ns.marshal_with(worker, code=201)
    def post(self):
        """Register a worker process (a restarted one gives back what it held)."""
        who = principal()
        with WORKER_CALLS(), state().db.write() as s:
            tokens.bind_worker(s, who, ns.payload["name"])
            w = worker_calls.register(s, ns.payload, create_batch=not tokens.is_worker(who))
            tokens.bound(s, who, w.id)
            out = worker_dict(s, w)
        state().dispatcher.wake()
        return out, 201


@ns.route("/<ref>")
@ns.param("ref", "worker id or name")
@ns.response(404, "No such worker", error)
@access("worker", write="user")
class OneWorker(Resource):
    @ns.marshal_with(worker)
    def get(self, ref):
        with state().db.read() as s:
            return worker_dict(s, find_worker(s, ref))

    @ns.response(400, "Invalid settings", error)
    @ns.response(409, "The worker is offline or lost: its status cannot be set", error)
    @ns.expect(settings_in, validate=True)
    @ns.marshal_with(worker)
    def put(self, ref):
        """Change concurrency, prefetch, status or batch; the worker applies it at once."""
        st = state()
        with st.db.write() as s:
            w = worker_calls.change_worker(s, find_worker(s, ref), ns.payload)
            out = worker_dict(s, w)
        st.notifier.notify(out["id"])
        st.dispatcher.wake()
        return out

    @ns.response(200, "Deleted", deleted)
    def delete(self, ref):
        """Forget the worker; what it held goes back to the queue."""
        st = state()
        with st.db.write() as s:
            w = find_worker(s, ref)
            wid = w.id
            n = worker_calls.delete_worker(s, w)
        st.notifier.notify(wid)
        st.dispatcher.wake()
        return {"deleted": wid, "given_back": n}


@ns.route(f"/<{ID}:worker_id>/poll")
@ns.response(400, "Invalid poll", error)
@ns.response(404, "No such worker", error)
@access("worker")
class Poll(Resource):
    @ns.expect(poll_in)
    @ns.response(200, "Success", poll_out)
    def post(self, worker_id):
        """Heartbeat, then wait up to `wait` seconds for new assignments or new settings."""
        st = state()
        body = check_poll(ns.payload)
        wait = float(body.get("wait", 20))
        if not math.isfinite(wait):
            raise BadRequest("wait must be a finite number of seconds")
        # A poll is a heartbeat only when it starts: it must end well within the lease.
        deadline = time.monotonic() + min(wait, MAX_WAIT, st.dispatcher.lease / 3)
        applied = {tuple(x) for x in body.get("signaled") or [] if len(x) == 2}
        gone = None
        while True:
            seen = st.notifier.version(worker_id)
            if gone is None:
                st.notifier.take(worker_id)     # handed before this poll: its look finds them
            settings, new, signals, left, live = _look(st, worker_id, body, first=gone is None)
            if gone is None:        # the first look
                gone = left         # what it holds and is no longer its own: told once
                # A worker holding nothing gets a pass at once. One that holds work is
                # refilled as its reports come (with `more`, or by the pass they wake):
                # waking a pass for each of its polls would race its own reports.
                if not live:
                    st.dispatcher.wake()
            changed = any(k in body and body[k] != v for k, v in settings.items())
            news = any((x["execution_id"], x["seq"]) not in applied for x in signals)
            answer = {"assignments": new, "signals": signals, "gone": gone, **settings}
            if new or news or gone or changed or not _hang(st, worker_id, seen, deadline):
                return answer
            # Woken by a pass: its new assignments come as the pass read them (no second look).
            handed = st.notifier.take(worker_id)
            if handed:
                return {**answer, "assignments": handed}


def _look(st, worker_id, body, first):
    """One read (and one connection): the worker's settings, what was assigned to it, the
    signals for it and what it holds that is no longer its own. The first look of a poll
    hears the worker; when that changes its row (a lost worker is back) or its depth
    changed, it writes them, and then looks."""
    with WORKER_CALLS(worker_id, st.dispatcher.lease / 3), st.db.read() as s:
        w = worker_calls.worker_settings(s, worker_id)
        if first:
            st.dispatcher.heard.note(worker_id, body.get("stats"))
        stale = first and (worker_calls.needs_heartbeat(w)
                           or worker_calls.new_depth(w, body.get("depth")) is not None)
        if not stale:
            settings = {"concurrency": w.concurrency, "prefetch": w.prefetch, "status": w.status}
            new, signals, left, live = worker_calls.pending_work(s, worker_id, set(body.get("known") or []))
            if w.status == WorkerStatus.LOST.value:
                new, signals = [], []
            return settings, assignments(s, st.notifier.undelivered(worker_id, new, live)), \
                signals, left, live
    with WORKER_CALLS(worker_id, st.dispatcher.lease / 3), st.db.write() as s:
        w = worker_calls.get_worker(s, worker_id)
        worker_calls.heartbeat(s, w, body.get("stats") or {})
        worker_calls.keep_depth(w, body.get("depth"))
        w.save(s)
    return _look(st, worker_id, body, first=False)


def _hang(st, worker_id, seen, deadline):
    """Wait for news of the worker until the deadline: True when it should look again (woken,
    or a recheck is due), False when its time is up with nothing changed since `seen` (the
    last look's answer holds) or the server stops."""
    while not st.notifier.closing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        woken = st.notifier.wait(worker_id, seen, min(remaining, RECHECK))
        if woken or deadline - time.monotonic() > 0:
            return not st.notifier.closing
    return False


@ns.route(f"/<{ID}:worker_id>/reports")
@ns.response(400, "Invalid reports", error)
@ns.response(404, "No such worker", error)
@access("worker")
class Reports(Resource):
    @ns.expect(reports_in)
    @ns.response(200, "Success", reports_out)
    def post(self, worker_id):
        """Execution reports (started, ended, released), applied in order, idempotent; with
        `more`, the answer also brings the worker's next assignments."""
        st = state()
        body = check_reports(ns.payload)
        claimed = None
        with WORKER_CALLS(worker_id, st.dispatcher.lease / 3), st.db.write() as s:
            # With more, its row is locked first: dispatch passes leave it to this claim.
            w = worker_calls.get_worker(s, worker_id, lock=bool(body.get("more")))
            # Heard: noted, and written with every other worker's about once a second.
            st.dispatcher.heard.note(worker_id)
            if worker_calls.needs_heartbeat(w):
                worker_calls.heartbeat(s, w, {})
            worker_calls.keep_depth(w, body.get("depth"))
            acked, refused = worker_calls.apply_reports(s, w, body.get("reports") or [], st.outputs)
            if body.get("status"):
                worker_calls.worker_news(s, w, body["status"])
            elif body.get("more"):
                claimed = st.dispatcher.claim_for(s, w)
                if claimed:
                    st.notifier.delivered(worker_id, [a["execution_id"] for a in claimed])
            w.save(s)
        ended = acked and any(r.get("status") in worker_calls.FINAL_REPORTS for r in body.get("reports") or ())
        if ended:
            st.notifier.tasks_ended()
        # Only an end (or the worker's news) can give it room: a start alone wakes no pass.
        if claimed is None and (ended or body.get("status")):
            # A worker with tasks queued (half its prefetch at least) keeps its slots busy:
            # its next tasks may wait for a pass that serves several reports at once.
            queued = body.get("queued") or 0
            st.dispatcher.wake(at_once=not queued or queued * 2 < ahead(w))
        answer = {"acked": acked, "refused": refused}
        if body.get("more"):
            answer["assignments"] = claimed or []
        return answer
