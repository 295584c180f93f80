"""Executions: the attempts of tasks, and their output read or appended by byte offset."""
import hashlib
import json

from flask import Response, request
from flask_restx import Namespace, Resource, fields, inputs, reqparse
from sqlalchemy import select

from scitq.errors import BadRequest, Conflict, TooLarge
from scitq.server.access import access
from scitq.server.api import (ERROR_FIELDS, ID, NullableInteger, NullableNested, NullableString,
                              natural_id, state)
from scitq.server.db import get_or_404
from scitq.server.models import Execution, Task
from scitq.status import ExecutionStatus

ns = Namespace("executions", description="Attempts of tasks on workers, and their output")

MAX_CHUNK = 16 << 20     # bytes of output a worker may send in one request

error = ns.model("Error", ERROR_FIELDS)
execution = ns.model("Execution", {
    "id": fields.Integer, "task_id": fields.Integer,
    "worker_id": NullableInteger(description="null once the worker is deleted"),
    "worker": NullableString(description="the worker's name, kept when it is deleted"),
    "status": fields.String, "pid": NullableInteger, "return_code": NullableInteger,
    "reason": NullableString(description="why it failed: exit_code, timeout, killed, lost..."),
    "error": NullableString, "paused": fields.Boolean,
    "cached_from": NullableInteger(description="the execution whose result it reused"),
    "stdout_bytes": fields.Integer, "stderr_bytes": fields.Integer,
    "assigned_at": fields.String, "started_at": NullableString, "ended_at": NullableString,
})
# The lengths too: a validator in Python lets the pattern's $ match before a final line break.
input_hash = ns.model("InputHash", {
    "path": fields.String(required=True, min_length=1, max_length=4096, description="under $INPUT"),
    "sha256": fields.String(required=True, pattern=r"^[0-9a-f]{64}$", min_length=64, max_length=64,
                            description="of the file's content")})
cache_in = ns.model("CacheInputs", {
    "inputs": fields.List(fields.Nested(input_hash), required=True, max_items=100_000,
                          description="every staged input file (none: [])")})
cache_hit = ns.model("CacheHit", {"execution_id": fields.Integer, "task_id": fields.Integer,
                                  "output": NullableString})
cache_out = ns.model("CacheAnswer", {"hit": NullableNested(cache_hit, description="null: none")})
appended = ns.model("OutputAppended", {"execution_id": fields.Integer, "stream": fields.String,
                                       "size": fields.Integer(description="bytes stored now")})
page = ns.model("ExecutionPage", {"items": fields.List(fields.Nested(execution)),
                                  "next": NullableInteger(description="null: the last page")})

list_args = reqparse.RequestParser()
list_args.add_argument("task_id", type=natural_id)
list_args.add_argument("worker_id", type=natural_id)
list_args.add_argument("status", choices=[s.value for s in ExecutionStatus])
list_args.add_argument("after", type=natural_id)
list_args.add_argument("limit", type=inputs.int_range(1, 1000), default=100)

output_args = reqparse.RequestParser()
output_args.add_argument("stream", choices=("stdout", "stderr"), default="stdout")
output_args.add_argument("offset", type=natural_id, default=0)
output_args.add_argument("limit", type=inputs.int_range(1, 16 << 20), default=1 << 20)

append_args = reqparse.RequestParser()
append_args.add_argument("stream", choices=("stdout", "stderr"), required=True)
append_args.add_argument("offset", type=natural_id, required=True)


def output_response(ex, args):
    """Raw bytes from `offset`; headers tell the stream's size and whether it can still grow."""
    data, size = state().outputs.read(ex.id, args["stream"], args["offset"], args["limit"])
    done = not ExecutionStatus(ex.status).is_active
    return Response(data, mimetype="application/octet-stream", headers={
        "X-Scitq-Execution": str(ex.id), "X-Scitq-Size": str(size),
        "X-Scitq-Offset": str(args["offset"]), "X-Scitq-Complete": "true" if done else "false"})


@ns.route("")
@access("user")
class Executions(Resource):
    @ns.response(400, "Invalid filter", error)
    @ns.expect(list_args)
    @ns.marshal_with(page)
    def get(self):
        a = list_args.parse_args()
        q = select(Execution).order_by(Execution.id).limit(a["limit"])
        for key in ("task_id", "worker_id", "status"):
            if a[key] is not None:
                q = q.where(getattr(Execution, key) == a[key])
        if a["after"] is not None:
            q = q.where(Execution.id > a["after"])
        with state().db.read() as s:
            items = [e.to_dict() for e in s.scalars(q)]
        return {"items": items, "next": items[-1]["id"] if len(items) == a["limit"] else None}


@ns.route(f"/<{ID}:execution_id>")
@ns.response(404, "No such execution", error)
@access("worker")
class OneExecution(Resource):
    @ns.marshal_with(execution)
    def get(self, execution_id):
        with state().db.read() as s:
            return get_or_404(s, Execution, execution_id).to_dict()


@ns.route(f"/<{ID}:execution_id>/output")
@ns.response(400, "Invalid stream, offset or limit", error)
@ns.response(404, "No such execution", error)
@access("worker")
class ExecutionOutput(Resource):
    @ns.response(200, "Bytes of the stream from offset (X-Scitq-Size: its size now)")
    @ns.expect(output_args)
    @ns.produces(["application/octet-stream", "application/json"])
    def get(self, execution_id):
        """Output from a byte offset: call again from offset + length to follow it (tail -f)."""
        with state().db.read() as s:
            return output_response(get_or_404(s, Execution, execution_id), output_args.parse_args())

    @ns.response(200, "Stored", appended)
    @ns.response(409, "A gap before the chunk, or the execution has ended", error)
    @ns.response(413, "A chunk too large", error)
    @ns.expect(append_args)
    def post(self, execution_id):
        """Append a chunk (the raw request body) at `offset`: for the execution's worker.

        A chunk already stored is acknowledged again; one past the end is refused (409).
        """
        a = append_args.parse_args()
        if request.content_length is not None and request.content_length > MAX_CHUNK:
            raise TooLarge(f"output chunks are limited to {MAX_CHUNK} bytes")
        data = request.get_data(cache=False)
        if len(data) > MAX_CHUNK:
            raise TooLarge(f"output chunks are limited to {MAX_CHUNK} bytes")
        st = state()
        with st.db.read() as s:
            ex = get_or_404(s, Execution, execution_id)
            if not ExecutionStatus(ex.status).is_active:      # its output is final once it ended
                raise Conflict(f"execution {execution_id} is {ex.status}: output refused")
        size = st.outputs.append(execution_id, a["stream"], a["offset"], data)
        return {"execution_id": execution_id, "stream": a["stream"], "size": size}


@ns.route(f"/<{ID}:execution_id>/cache")
@access("worker")
class ExecutionCache(Resource):
    @ns.response(400, "Invalid input hashes", error)
    @ns.response(404, "No such execution", error)
    @ns.response(409, "The execution has ended", error)
    @ns.expect(cache_in, validate=True)
    @ns.marshal_with(cache_out)
    def post(self, execution_id):
        """For the execution's worker, once its inputs are staged: the server makes the
        execution's cache key from its task as stored (command, shell, container, options,
        resources) and the content hashes of its inputs, and, when its task has use_cache,
        names a succeeded execution of the same task fields and key whose result can be reused."""
        inputs = ns.payload["inputs"]
        with state().db.write() as s:
            ex = get_or_404(s, Execution, execution_id)
            if not ExecutionStatus(ex.status).is_active:
                raise Conflict(f"execution {execution_id} is {ex.status}")
            ex.cache_key = cache_key(ex.task, inputs)
            if not ex.task.use_cache:
                return {"hit": None}
            hits = s.execute(select(Execution.id, Task)
                             .join(Task, Execution.task_id == Task.id)
                             .where(Execution.cache_key == ex.cache_key, Execution.id != ex.id,
                                    Execution.status == ExecutionStatus.SUCCEEDED.value)
                             .order_by(Execution.id.desc()).limit(20)).all()
            hit = next(((eid, t.id, t.output) for eid, t in hits if _made(t) == _made(ex.task)), None)
        if hit is None:
            return {"hit": None}
        return {"hit": {"execution_id": hit[0], "task_id": hit[1], "output": hit[2]}}


def _made(task):
    """What makes a task's result, as stored: a worker says only what its inputs hold."""
    return [task.command, task.shell, task.container, task.container_options,
            sorted(task.resources or [])]


def cache_key(task, inputs):
    """sha256 of the task's stored fields and its inputs' content hashes (not their URIs: a
    changed file is a new result)."""
    paths = sorted((i["path"], i["sha256"]) for i in inputs)
    if len({p for p, _ in paths}) != len(paths):
        raise BadRequest("an input path is named twice")
    return hashlib.sha256(json.dumps(["scitq cache 2", _made(task), paths]).encode()).hexdigest()
