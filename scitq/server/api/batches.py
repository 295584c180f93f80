"""Batches: named groups of tasks, their progress, pause and resume."""
from flask_restx import Namespace, Resource, fields

from scitq.server import queue
from scitq.server.api import state
from scitq.status import BatchStatus

ns = Namespace("batches", description="Named groups of tasks and their progress")

counts = ns.model("BatchCounts", {s: fields.Integer for s in queue.STATUSES + ["remaining", "total"]})
batch = ns.model("Batch", {
    "id": fields.Integer, "name": fields.String, "status": fields.String,
    "created_at": fields.String, "counts": fields.Nested(counts),
})
batch_in = ns.model("BatchIn", {"name": fields.String(required=True, max_length=128)})


@ns.route("")
class Batches(Resource):
    @ns.marshal_list_with(batch)
    def get(self):
        """Every batch with its task counts per status, including remaining."""
        with state().db.read() as s:
            return queue.list_batches(s)

    @ns.expect(batch_in, validate=True)
    @ns.marshal_with(batch, code=201)
    def post(self):
        """Create an empty batch (tasks also create theirs on the fly)."""
        with state().db.write() as s:
            b = queue.create_batch(s, ns.payload["name"])
            return queue.batch_summary(s, b), 201


@ns.route("/<ref>")
@ns.param("ref", "batch id or name")
class OneBatch(Resource):
    @ns.marshal_with(batch)
    def get(self, ref):
        with state().db.read() as s:
            return queue.batch_summary(s, queue.get_batch(s, ref))

    def delete(self, ref):
        """Delete the batch, its tasks and their outputs (refused while tasks run)."""
        st = state()
        with st.db.write() as s:
            execution_ids = queue.delete_batch(s, queue.get_batch(s, ref))
        st.outputs.delete(execution_ids)
        return {"deleted": ref}


def _set_status(ref, status):
    st = state()
    with st.db.write() as s:
        b = queue.set_batch_status(s, queue.get_batch(s, ref), status)
        out = queue.batch_summary(s, b)
    st.dispatcher.wake()
    return out


@ns.route("/<ref>/pause")
class PauseBatch(Resource):
    @ns.marshal_with(batch)
    def post(self, ref):
        """Hold the batch's pending tasks out of dispatch; running ones go on."""
        return _set_status(ref, BatchStatus.PAUSED)


@ns.route("/<ref>/resume")
class ResumeBatch(Resource):
    @ns.marshal_with(batch)
    def post(self, ref):
        return _set_status(ref, BatchStatus.ACTIVE)
