"""Tasks: submit one or many, list with filters and a cursor, show, edit, relaunch, delete."""
from flask_restx import Namespace, Resource, fields, inputs, reqparse
from sqlalchemy.exc import IntegrityError

from scitq.server import lifecycle, task_store
from scitq.server.access import access
from scitq.server.db import get_or_404
from scitq.server.models import Task
from scitq.server.api import (ERROR_FIELDS, ID, IdOrName, NullableFloat, NullableInteger,
                              NullableString, natural_id, state)
from scitq.server.api.executions import execution, output_response, output_args
from scitq.server.api.bodycheck import compile_model

ns = Namespace("tasks", description="What to run")
error = ns.model("Error", ERROR_FIELDS)

task_fields = {
    "command": fields.String(required=True, min_length=1, description="shell command line"),
    "name": fields.String(max_length=255),
    "batch": fields.String(max_length=128, description="batch name (created if missing)"),
    "shell": fields.Boolean(default=True, description="run through /bin/sh -c (else split into argv)"),
    "retries": fields.Integer(min=0, max=task_store.MAX_RETRIES, default=0,
                              description="attempts allowed after a failed one"),
    "retry_delay": fields.Float(min=0, default=0, description="seconds before a retry"),
    "retry_backoff": fields.Float(min=1, default=1,
                                  description="the delay is multiplied by this for each further retry"),
    "timeout": fields.Float(min=0, description="seconds the command may run; then its process "
                                               "group is killed and the attempt fails (timeout)"),
    "staging_timeout": fields.Float(min=0, description="seconds its inputs and resources may "
                                                       "take to download"),
    "depends_on": fields.List(IdOrName, description="ids of tasks it waits for, or refs of "
                                                      "tasks of the same request"),
    "ref": fields.String(max_length=255, description="a name other tasks of the same request "
                                                     "can depend on"),
    "container": fields.String(max_length=512, description="docker image to run the command in"),
    "container_options": fields.String(max_length=4096, description="docker run options"),
    "inputs": fields.List(fields.String, description="URIs downloaded into $INPUT "
                                                     "(|gunzip |untar |unzip |mv:DIR)"),
    "resources": fields.List(fields.String, description="URIs cached per worker, read-only "
                                                        "in $RESOURCE"),
    "output": fields.String(max_length=4096, description="URI that receives $OUTPUT after the run"),
    "use_cache": fields.Boolean(default=False, description="reuse a succeeded execution with the "
                                                           "same command, container and inputs"),
}
task_in = ns.model("TaskIn", task_fields)
bulk_in = ns.model("TasksIn", {
    "batch": fields.String(max_length=128, description="default batch of the tasks"),
    "submission": fields.String(min_length=1, max_length=255, description=(
        "an id of this request chosen by the client: the same request sent again (its answer "
        "was lost) returns the ids stored then and stores nothing; with other tasks, a 409")),
    "tasks": fields.List(fields.Nested(task_in), required=True, min_items=1),
})
task_edit = ns.model("TaskEdit", {k: v for k, v in task_fields.items() if k not in ("batch", "ref")} | {
    "command": fields.String(min_length=1),
    "depends_on": fields.List(fields.Integer, description="ids of the tasks it waits for")})
# How a task runs: in the task as stored, and in the assignment a worker gets.
# (null: not set)
how_it_runs = {
    "timeout": NullableFloat, "staging_timeout": NullableFloat,
    "container": NullableString, "container_options": NullableString,
    "inputs": fields.List(fields.String), "resources": fields.List(fields.String),
    "output": NullableString, "use_cache": fields.Boolean,
}
task = ns.model("Task", {
    "id": fields.Integer, "batch": fields.String, "batch_id": fields.Integer,
    "name": NullableString, "command": fields.String, "shell": fields.Boolean,
    "status": fields.String, "reason": NullableString(description="why it failed or was canceled"),
    "attempt": fields.Integer, "retries": fields.Integer, "retry_delay": fields.Float,
    "retry_backoff": fields.Float,
    "not_before": NullableString(description="a retry waits till then"), **how_it_runs,
    "created_at": fields.String, "updated_at": fields.String,
})
task_detail = ns.inherit("TaskDetail", task, {
    "depends_on": fields.List(fields.Integer), "executions": fields.List(fields.Nested(execution))})
page = ns.model("TaskPage", {"items": fields.List(fields.Nested(task)),
                             "next": NullableInteger(description="cursor of the next page "
                                                                 "(null: this is the last)")})
deleted = ns.model("TaskDeleted", {"deleted": fields.Integer(description="its id")})
created = ns.model("TasksCreated", {"ids": fields.List(fields.Integer), "count": fields.Integer})
check_bulk = compile_model(bulk_in)

list_args = reqparse.RequestParser()
list_args.add_argument("batch", help="batch id or name")
list_args.add_argument("status", action="split", help="status, or several separated by commas")
list_args.add_argument("name", help="name, * as wildcard")
list_args.add_argument("after", type=natural_id, help="cursor: the last id of the previous page")
list_args.add_argument("limit", type=inputs.int_range(1, 1000), default=100)


def _created(ids, new=True):
    if new:
        dispatcher = state().dispatcher
        dispatcher.tasks_added(len(ids))
        dispatcher.wake()
    return {"ids": ids, "count": len(ids)}, 201


@ns.route("")
@access("user")
class Tasks(Resource):
    @ns.response(400, "Invalid filter", error)
    @ns.response(404, "No such batch", error)
    @ns.expect(list_args)
    @ns.marshal_with(page)
    def get(self):
        """A page of tasks in submission order; pass `next` back as `after` for the next one."""
        a = list_args.parse_args()
        with state().db.read() as s:
            tasks, nxt = task_store.list_tasks(s, a["batch"], a["status"], a["name"], a["after"], a["limit"])
            return {"items": [t.to_dict() for t in tasks], "next": nxt}

    @ns.response(400, "Invalid task", error)
    @ns.expect(task_in, validate=True)
    @ns.marshal_with(task, code=201)
    def post(self):
        """Submit one task."""
        with state().db.write() as s:
            (tid,) = task_store.create_tasks(s, [ns.payload])
            out = get_or_404(s, Task, tid).to_dict()
        state().dispatcher.tasks_added(1)       # a thousand single ones count as a bulk one
        state().dispatcher.wake()
        return out, 201


@ns.route("/bulk")
@access("user")
class BulkTasks(Resource):
    @ns.response(400, "Invalid task (none is stored)", error)
    @ns.response(409, "This submission id was stored with other tasks", error)
    @ns.expect(bulk_in)
    @ns.marshal_with(created, code=201)
    def post(self):
        """Submit many tasks in one request and one transaction (all or none); with a
        `submission` id, once: the same request again returns the ids stored the first time."""
        payload = check_bulk(ns.payload)     # validate=True's rules, compiled (100k tasks)
        args = payload["tasks"], payload.get("batch"), payload.get("submission")
        try:
            with state().db.write() as s:
                ids, new = task_store.submit_tasks(s, *args)
        except IntegrityError:
            if args[2] is None:
                raise
            with state().db.write() as s:   # its twin (a client's retry) stored it meanwhile
                ids, new = task_store.submit_tasks(s, *args)
        return _created(ids, new)


@ns.route(f"/<{ID}:task_id>")
@ns.response(404, "No such task", error)
@access("user")
class OneTask(Resource):
    @ns.marshal_with(task_detail)
    def get(self, task_id):
        """A task with every execution (attempt) it had."""
        with state().db.read() as s:
            return task_store.task_detail(s, get_or_404(s, Task, task_id))

    @ns.response(400, "Invalid change", error)
    @ns.response(409, "The task is assigned or running", error)
    @ns.expect(task_edit, validate=True)
    @ns.marshal_with(task)
    def put(self, task_id):
        """Edit a task that is not running (then relaunch it to run the new command)."""
        with state().db.write() as s:
            return task_store.update_task(s, get_or_404(s, Task, task_id), ns.payload).to_dict()

    @ns.response(200, "Deleted", deleted)
    @ns.response(409, "The task is assigned or running", error)
    def delete(self, task_id):
        """Delete a task that is not running, with its executions and outputs."""
        st = state()
        with st.db.write() as s:
            execution_ids = task_store.delete_task(s, get_or_404(s, Task, task_id))
        st.outputs.delete(execution_ids)
        return {"deleted": task_id}


@ns.route(f"/<{ID}:task_id>/relaunch")
@ns.response(404, "No such task", error)
@ns.response(409, "The task is not finished", error)
@access("user")
class RelaunchTask(Resource):
    @ns.marshal_with(task)
    def post(self, task_id):
        """Queue a finished task again; its past executions stay as history."""
        with state().db.write() as s:
            t = get_or_404(s, Task, task_id)
            lifecycle.relaunch(s, [t.id])
            out = t.to_dict()
        state().dispatcher.wake()
        return out


def _act(task_id, action):
    st = state()
    with st.db.write() as s:
        t = get_or_404(s, Task, task_id)
        worker_id = action(s, t)
        out = t.to_dict()
    if worker_id is not None:
        st.notifier.notify(worker_id)
    st.dispatcher.wake()
    return out


@ns.route(f"/<{ID}:task_id>/force")
@ns.response(404, "No such task", error)
@ns.response(409, "The task is neither waiting nor canceled", error)
@access("user")
class ForceTask(Resource):
    @ns.marshal_with(task)
    def post(self, task_id):
        """Run a waiting or canceled task now, whatever its dependencies say."""
        return _act(task_id, lambda s, t: lifecycle.force(s, t) and None)


def _signal_route(sig, doc):
    @access("user")
    class Signal(Resource):
        @ns.marshal_with(task)
        def post(self, task_id):
            return _act(task_id, lambda s, t: lifecycle.signal_task(s, t, sig))
    Signal.post.__doc__ = doc
    Signal.__name__ = f"{sig.title()}Task"
    ns.response(404, "No such task", error)(Signal)
    ns.response(409, f"The task's status leaves nothing to {sig}", error)(Signal)
    ns.route(f"/<{ID}:task_id>/{sig}")(Signal)


_signal_route("kill", "Kill a running task (SIGKILL to its process group or container): it fails "
                      "for good, without retry. A task not started yet is canceled.")
_signal_route("pause", "Suspend a running task (SIGSTOP, or docker pause).")
_signal_route("resume", "Continue a paused task (SIGCONT, or docker unpause).")


@ns.route(f"/<{ID}:task_id>/output")
@access("user")
class TaskOutput(Resource):
    @ns.response(200, "Bytes of the stream from offset (X-Scitq-Size: its size now)")
    @ns.response(400, "Invalid stream, offset or limit", error)
    @ns.response(404, "No such task, or it has not run yet", error)
    @ns.expect(output_args)
    @ns.produces(["application/octet-stream", "application/json"])
    def get(self, task_id):
        """Output of the task's latest execution, from a byte offset (see executions)."""
        with state().db.read() as s:
            return output_response(task_store.latest_execution(s, task_id), output_args.parse_args())
