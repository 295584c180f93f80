"""Jobs: deploys and teardowns of worker hosts, their status and their logs."""
from flask import Response
from flask_restx import Namespace, Resource, fields, inputs, reqparse
from sqlalchemy import select

from scitq.errors import BadRequest
from scitq.server import jobs as jobs_
from scitq.server.access import access
from scitq.server.api import ERROR_FIELDS, ID, NullableInteger, NullableString, natural_id, state
from scitq.server.db import get_or_404
from scitq.server.deploys import ENGINES, deploy_params
from scitq.server.models import Job
from scitq.status import JobStatus

ns = Namespace("jobs", description="Deploys and teardowns of worker hosts, retried by policy")

error = ns.model("Error", ERROR_FIELDS)
job = ns.model("Job", {
    "id": fields.Integer, "kind": fields.String, "target": fields.String, "status": fields.String,
    "params": fields.Raw, "attempts": fields.Integer, "max_attempts": fields.Integer,
    "earlier_attempts": fields.Integer(description="attempts made before the last retry"),
    "error": NullableString(description="why its last attempt failed"),
    "created_at": fields.String, "next_try_at": fields.String,
    "started_at": NullableString, "ended_at": NullableString,
})
hosts = fields.List(fields.String(max_length=253), required=True, min_items=1, max_items=1000)
deploy_in = ns.model("DeployIn", {
    "hosts": hosts,
    "user": fields.String(max_length=32, default="root"),
    "port": fields.Integer(min=1, max=65535, default=22),
    "engine": fields.String(enum=list(ENGINES), description="default: the server's --deploy-engine"),
    "concurrency": fields.Integer(min=1, max=1024, default=1),
    "prefetch": NullableInteger(min=0, max=1024, description="null (the default): the worker sizes it"),
    "batch": fields.String(max_length=128),
    "name": fields.String(max_length=128, description="worker name (one host only; default: the host)"),
    "server_url": fields.String(max_length=512, description="how the hosts reach this server"),
    "max_attempts": fields.Integer(min=1, max=20, default=3),
})
teardown_in = ns.model("TeardownIn", {
    "hosts": hosts,
    "user": fields.String(max_length=32, default="root"),
    "port": fields.Integer(min=1, max=65535, default=22),
    "engine": fields.String(enum=list(ENGINES), description="default: the server's --deploy-engine"),
    "max_attempts": fields.Integer(min=1, max=20, default=3),
})
page = ns.model("JobPage", {"items": fields.List(fields.Nested(job)),
                            "next": NullableInteger(description="null: the last page")})

list_args = reqparse.RequestParser()
list_args.add_argument("status", choices=[s.value for s in JobStatus])
list_args.add_argument("kind", choices=jobs_.KINDS)
list_args.add_argument("after", type=natural_id)
list_args.add_argument("limit", type=inputs.int_range(1, 1000), default=100)

log_args = reqparse.RequestParser()
log_args.add_argument("offset", type=natural_id, default=0)
log_args.add_argument("limit", type=inputs.int_range(1, 16 << 20), default=1 << 20)


def _create(kind, params, hosts, max_attempts):
    st = state()
    with st.db.write() as s:
        made = [j.to_dict() for j in jobs_.create_jobs(s, kind, hosts, params, max_attempts)]
    st.jobs.wake()
    return made, 201


@ns.route("")
@access("user")
class Jobs(Resource):
    @ns.response(400, "Invalid filter", error)
    @ns.expect(list_args)
    @ns.marshal_with(page)
    def get(self):
        a = list_args.parse_args()
        q = select(Job).order_by(Job.id.desc()).limit(a["limit"])
        for key in ("status", "kind"):
            if a[key]:
                q = q.where(getattr(Job, key) == a[key])
        if a["after"] is not None:
            q = q.where(Job.id < a["after"])
        with state().db.read() as s:
            items = [j.to_dict() for j in s.scalars(q)]
        return {"items": items, "next": items[-1]["id"] if len(items) == a["limit"] else None}


@ns.route("/deploy")
@access("admin")
class Deploy(Resource):
    @ns.response(400, "Invalid hosts or settings (no job is made)", error)
    @ns.expect(deploy_in, validate=True)
    @ns.marshal_list_with(job, code=201)
    def post(self):
        """Bootstrap workers on SSH hosts (one job per host), with the server's SSH key."""
        body = ns.payload
        if body.get("name") and len(body["hosts"]) > 1:
            raise BadRequest("a worker name goes with one host only")
        params = deploy_params(body, state().public_url, state().deploy_engine)
        return _create("deploy", params, body["hosts"], body.get("max_attempts", 3))


@ns.route("/teardown")
@access("admin")
class Teardown(Resource):
    @ns.response(400, "Invalid hosts or settings (no job is made)", error)
    @ns.expect(teardown_in, validate=True)
    @ns.marshal_list_with(job, code=201)
    def post(self):
        """Stop and remove the worker from hosts (one job per host)."""
        body = ns.payload
        params = {"engine": body.get("engine") or state().deploy_engine, "user": body.get("user") or "root",
                  "port": body.get("port") or 22}
        return _create("teardown", params, body["hosts"], body.get("max_attempts", 3))


@ns.route(f"/<{ID}:job_id>")
@ns.response(404, "No such job", error)
@access("user")
class OneJob(Resource):
    @ns.marshal_with(job)
    def get(self, job_id):
        with state().db.read() as s:
            return get_or_404(s, Job, job_id).to_dict()


@ns.route(f"/<{ID}:job_id>/retry")
@ns.response(404, "No such job", error)
@ns.response(409, "The job has not failed", error)
@access("admin")
class RetryJob(Resource):
    @ns.marshal_with(job)
    def post(self, job_id):
        """Run a failed job again, with a fresh set of attempts."""
        st = state()
        with st.db.write() as s:
            out = jobs_.retry_job(s, get_or_404(s, Job, job_id)).to_dict()
        st.jobs.wake()
        return out


@ns.route(f"/<{ID}:job_id>/log")
@access("user")
class JobLog(Resource):
    @ns.response(200, "The log from offset (X-Scitq-Size: its size now)")
    @ns.response(400, "Invalid offset or limit", error)
    @ns.response(404, "No such job", error)
    @ns.expect(log_args)
    @ns.produces(["text/plain", "application/json"])
    def get(self, job_id):
        """The job's log from a byte offset (call again from offset + length to follow it)."""
        a = log_args.parse_args()
        st = state()
        with st.db.read() as s:
            j = get_or_404(s, Job, job_id)
            done = j.status in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)
        data, size = st.job_logs.read(job_id, "log", a["offset"], a["limit"])
        return Response(data, mimetype="text/plain", headers={
            "X-Scitq-Size": str(size), "X-Scitq-Offset": str(a["offset"]),
            "X-Scitq-Complete": "true" if done else "false"})
