"""Batches: named groups of tasks, their progress, a wait for their end, pause and resume."""
import time

from flask_restx import Namespace, Resource, fields, inputs, reqparse

from scitq.errors import BadRequest
from scitq.server import lifecycle, task_store
from scitq.server.access import access
from scitq.server.api import ERROR_FIELDS, NullableInteger, state
from scitq.status import BatchStatus

ns = Namespace("batches", description="Named groups of tasks and their progress")

error = ns.model("Error", ERROR_FIELDS)
counts = ns.model("BatchCounts", {s: fields.Integer for s in task_store.STATUSES + ["remaining", "total"]})


batch = ns.model("Batch", {
    "id": fields.Integer, "name": fields.String,
    "status": fields.String(enum=[b.value for b in BatchStatus], description=(
        "active, paused, or done: active with every task ended (adding tasks makes it active)")),
    "concurrency": NullableInteger(description="tasks of the batch run at once at most (null: no cap)"),
    "created_at": fields.String, "counts": fields.Nested(counts),
})
batch_in = ns.model("BatchIn", {
    "name": fields.String(required=True, max_length=128),
    "concurrency": NullableInteger(min=1, description="cap on its tasks running at once")})
batch_edit = ns.model("BatchSettings", {
    "concurrency": NullableInteger(min=1, description="cap on its tasks running at once (null: none)")})
deleted = ns.model("BatchDeleted", {"deleted": fields.String(description="the batch as named")})
stop_args = reqparse.RequestParser()
stop_args.add_argument("requeue", type=inputs.boolean, default=False,
                       help="put the killed tasks back to pending (else they fail)")
MAX_WAIT = 60.0     # seconds a batch wait may hang
MIN_LOOK_GAP = 0.02     # seconds between two looks of one wait, at least (and twice a look's time)
wait_args = reqparse.RequestParser()
wait_args.add_argument("timeout", type=float, default=20.0,
                       help=f"seconds to wait at most (0 to {MAX_WAIT:g})")
pause_args = reqparse.RequestParser()
pause_args.add_argument("running", type=inputs.boolean, default=False,
                        help="also suspend (SIGSTOP) its running tasks")


@ns.route("")
@access("user")
class Batches(Resource):
    @ns.marshal_list_with(batch)
    def get(self):
        """Every batch with its task counts per status, including remaining."""
        with state().db.read() as s:
            return task_store.list_batches(s)

    @ns.response(400, "Invalid name or concurrency", error)
    @ns.response(409, "A batch of that name exists", error)
    @ns.expect(batch_in, validate=True)
    @ns.marshal_with(batch, code=201)
    def post(self):
        """Create an empty batch (tasks also create theirs on the fly)."""
        with state().db.write() as s:
            b = task_store.create_batch(s, ns.payload["name"], ns.payload.get("concurrency"))
            return task_store.batch_summary(s, b), 201


@ns.route("/<ref>")
@ns.param("ref", "batch id or name")
@ns.response(404, "No such batch", error)
@access("user")
class OneBatch(Resource):
    @ns.marshal_with(batch)
    def get(self, ref):
        with state().db.read() as s:
            return task_store.batch_summary(s, task_store.get_batch(s, ref))

    @ns.response(400, "Invalid settings", error)
    @ns.expect(batch_edit, validate=True)
    @ns.marshal_with(batch)
    def put(self, ref):
        """Change the batch's settings (concurrency cap); applied at the next dispatch."""
        st = state()
        with st.db.write() as s:
            b = task_store.change_batch(s, task_store.get_batch(s, ref), ns.payload or {})
            out = task_store.batch_summary(s, b)
        st.dispatcher.wake()
        return out

    @ns.response(200, "Deleted", deleted)
    @ns.response(409, "Some of its tasks are assigned or running", error)
    def delete(self, ref):
        """Delete the batch, its tasks and their outputs (refused while tasks run)."""
        st = state()
        with st.db.write() as s:
            execution_ids = task_store.delete_batch(s, task_store.get_batch(s, ref))
        st.outputs.delete(execution_ids)
        st.notifier.tasks_ended()
        return {"deleted": ref}


@ns.route("/<ref>/wait")
@ns.param("ref", "batch id or name")
@ns.response(404, "No such batch", error)
@access("user")
class WaitBatch(Resource):
    @ns.response(400, "Invalid timeout", error)
    @ns.expect(wait_args)
    @ns.marshal_with(batch)
    def get(self, ref):
        """The batch's summary as soon as nothing remains in it, else after `timeout` seconds.

        A client waits for a batch with one call instead of a look every second, and hears
        of its last task's end at once: each end in this server wakes the waits, which look
        again (at most every 20 ms, or twice as long as a look takes on a big batch)."""
        timeout = wait_args.parse_args()["timeout"]
        if not 0 <= timeout <= MAX_WAIT:        # also NaN
            raise BadRequest(f"timeout must be a number of seconds from 0 to {MAX_WAIT:g}")
        st = state()
        deadline = time.monotonic() + timeout
        while True:
            seen = st.notifier.ends()
            started = time.monotonic()
            with st.db.read() as s:
                out = task_store.batch_summary(s, task_store.get_batch(s, ref))
            now = time.monotonic()
            left = deadline - now
            if not out["counts"]["remaining"] or left <= 0 or st.notifier.closing:
                return out
            # Another server process's ends wake no one here: look again within 1 s anyway.
            st.notifier.wait_ends(seen, min(left, 1.0))
            time.sleep(max(0.0, min(deadline, started + max(MIN_LOOK_GAP, 2 * (now - started)))
                           - time.monotonic()))


def _steer(ref, change):
    """Apply change(session, batch) -> workers to wake; answer the batch's summary."""
    st = state()
    with st.db.write() as s:
        b = task_store.get_batch(s, ref)
        workers = change(s, b) or ()
        out = task_store.batch_summary(s, b)
    st.notifier.notify(*[w for w in workers if w is not None])
    st.notifier.tasks_ended()
    st.dispatcher.wake()
    return out


@ns.route("/<ref>/pause")
@ns.response(404, "No such batch", error)
@access("user")
class PauseBatch(Resource):
    @ns.response(400, "Invalid argument", error)
    @ns.expect(pause_args)
    @ns.marshal_with(batch)
    def post(self, ref):
        """Hold the batch's pending tasks out of dispatch; running ones go on, unless
        `running` is true: then they are suspended too (SIGSTOP) until resumed."""
        running = pause_args.parse_args()["running"]

        def pause(s, b):
            task_store.set_batch_status(s, b, BatchStatus.PAUSED)
            return lifecycle.signal_batch(s, b, "pause") if running else ()
        return _steer(ref, pause)


@ns.route("/<ref>/resume")
@ns.response(404, "No such batch", error)
@access("user")
class ResumeBatch(Resource):
    @ns.marshal_with(batch)
    def post(self, ref):
        """Dispatch the batch's tasks again, and continue its suspended ones."""
        def resume(s, b):
            task_store.set_batch_status(s, b, BatchStatus.ACTIVE)
            return lifecycle.signal_batch(s, b, "resume")
        return _steer(ref, resume)


@ns.route("/<ref>/stop")
@ns.response(404, "No such batch", error)
@access("user")
class StopBatch(Resource):
    @ns.response(400, "Invalid argument", error)
    @ns.expect(stop_args)
    @ns.marshal_with(batch)
    def post(self, ref):
        """Pause the batch and kill its running tasks: they go back to pending with
        `requeue=true` (no retry spent), else they fail."""
        requeue = stop_args.parse_args()["requeue"]
        return _steer(ref, lambda s, b: lifecycle.stop_batch(s, b, requeue))
