"""Recruiters (rules that rent hosts for a batch) and instances (the hosts rented, with
what they cost). The logic is in scitq.server.recruit (recruiters, ledger); this is its HTTP face."""
from flask_restx import Namespace, Resource, fields, inputs, marshal, reqparse

from scitq.server.recruit import ledger, preview, recruiters
from scitq.server.access import access
from scitq.server.db import get_or_404
from scitq.server.deploys import check_reachable
from scitq.server.models import Instance, Recruiter
from scitq.server.api import (ERROR_FIELDS, ID, NullableFloat, NullableInteger, NullableList,
                              NullableString, batches, natural_id, state)

ns = Namespace("recruiters", description="Rules that rent hosts for a batch, and what they cost")
instances_ns = Namespace("instances", description="Hosts scitq rented: whom they serve, what they cost")
error = ns.model("Error", ERROR_FIELDS)
instances_error = instances_ns.model("Error", ERROR_FIELDS)


cost = ns.model("Cost", {
    "spent": fields.Float(description="closed costs plus what unclosed hosts cost so far"),
    "hourly": fields.Float(description="what its live hosts cost per hour now"),
    "hosts": fields.Integer(description="live hosts (creating, deploying or running)"),
})
recruiter_fields = {
    "provider": fields.String(required=True, min_length=1, max_length=32,
                              description="a provider configured on this server"),
    "regions": NullableList(fields.String(min_length=1, max_length=64), min_items=1,
                            description="regions it may rent in (null: every region)"),
    "flavor": NullableString(min_length=1, max_length=128,
                             description="a flavor name; or give minimums instead"),
    "min_cpu": NullableInteger(min=1, description="at least this many cores"),
    "min_ram": NullableFloat(min=0, description="at least this much RAM, GiB (above 0)"),
    "min_disk": NullableFloat(min=0, description="at least this much disk, GiB (above 0)"),
    "gpu": fields.Boolean(default=False, description="with minimums: only flavors with a GPU"),
    "spot": fields.Boolean(default=False, description="rent spot (preemptible) hosts"),
    "max_workers": fields.Integer(required=True, min=1, max=recruiters.MAX_WORKERS,
                                  description="live hosts at most"),
    "tasks_per_worker": fields.Integer(required=True, min=1, max=recruiters.MAX_TASKS_PER_WORKER,
                                       description="one more host per this many remaining tasks"),
    "concurrency": fields.Integer(required=True, min=1, max=recruiters.MAX_CONCURRENCY,
                                  description="tasks each of its workers runs at once"),
    "prefetch": NullableInteger(min=0, max=recruiters.MAX_PREFETCH, description="tasks each worker "
                                "takes ahead; null (the default): each worker sizes it"),
    "idle_timeout": fields.Float(min=0, max=recruiters.MAX_IDLE_TIMEOUT, default=300,
                                 description="seconds a host may run nothing before it is deleted"),
    "deploy_timeout": NullableInteger(min=1, max=recruiters.MAX_DEPLOY_TIMEOUT,
                                      description="seconds from a host's order to its worker's "
                                                  "registration, past which it is deleted "
                                                  "(null: the server's default)"),
    # Above 0 (checked by the rules: JSON Schema drafts disagree on exclusiveMinimum).
    "max_hourly_cost": NullableFloat(min=0, description="at most this much an hour for all its "
                                                        "live hosts together, above 0 (null: any)"),
    "budget": NullableFloat(min=0, description="its hosts never cost more than this in all: none "
                                               "is rented past it, and they go before it is "
                                               "reached; above 0 (null: no cap)"),
    "rank": fields.Integer(default=0, description="lower ranks recruit first"),
}
recruiter_in = ns.model("RecruiterIn", {
    "batch": fields.String(required=True, max_length=128,
                           description="name of the batch it serves (created if missing)"),
    **recruiter_fields,
    "dry_run": fields.Boolean(default=False, description="store nothing: answer the plan of "
                                                         "what it would rent now (as ?dry_run=1)")})
recruiter = ns.model("Recruiter", {
    "id": fields.Integer, "batch": fields.String, "batch_id": fields.Integer, **recruiter_fields,
    "created_at": fields.String,
    "cost": fields.Nested(cost, description="what its hosts cost"),
    "remaining": fields.Integer(description="tasks of its batch not finished yet"),
})
deleted = ns.model("RecruiterDeleted", {
    "deleted": fields.Integer(description="its id"),
    "live_hosts": fields.Integer(description="its hosts still live: they serve until idle")})
batch_cost = ns.model("BatchCost", {"batch": fields.String, **cost})
DRAIN = ("seconds the batch's remaining tasks take at its measured rate (null: no rate "
         "measured yet, so unknown)")
plan_row = ns.model("PlanRow", {
    "recruiter": NullableInteger(description="its recruiter (null: the would-be one of a dry run)"),
    "action": fields.String(enum=["rent", "reuse", "delete", "ruled out"],
                            description="rent hosts of an offer, reuse idle hosts, delete a host, "
                                        "or an offer that fits but is ruled out"),
    "provider": fields.String, "region": fields.String, "flavor": fields.String,
    "count": NullableInteger(description="hosts (null for an offer ruled out)"),
    "hourly_cost": NullableFloat(description="per host and hour (null: no known price)"),
    "cost": NullableFloat(description="expected: count x hourly cost x drain (null: unknown)"),
    "drain": NullableInteger(description=DRAIN),
    "why": fields.String(description="why this choice: for one ruled out, the quota, budget, "
                                     "max hourly cost or unhealthy region that stopped it"),
})
plan_recruiter = ns.model("PlanRecruiter", {
    "id": NullableInteger(description="null: the would-be recruiter of a dry run"),
    "want": fields.Integer(description="live hosts it wants now"),
    "live": fields.Integer(description="live hosts it has"),
    "concurrency": fields.Integer(description="tasks each of its hosts runs at once")})
recruitment_plan = ns.model("RecruitmentPlan", {
    "batch": fields.String, "remaining": fields.Integer(description="tasks not finished yet"),
    "rate": NullableFloat(description="tasks ended a minute over the last 5 minutes (null: none)"),
    "drain": NullableInteger(description=DRAIN),
    "note": NullableString(description="the rate, time and cost in a sentence"),
    "recruiters": fields.List(fields.Nested(plan_recruiter)),
    "rows": fields.List(fields.Nested(plan_row)),
})

list_args = reqparse.RequestParser()
list_args.add_argument("batch", help="batch id or name")
cost_args = reqparse.RequestParser()
cost_args.add_argument("batch", required=True, help="batch id or name")
add_args = reqparse.RequestParser()
add_args.add_argument("dry_run", type=inputs.boolean, location="args", default=False,
                      help="store nothing: answer the plan of what it would rent now")


def _wake():
    """The recruitment loop acts on a change at once rather than at its next round."""
    reconciler = getattr(state(), "reconciler", None)
    if reconciler is not None:
        reconciler.wake()


@ns.route("")
@access("user")
class Recruiters(Resource):
    @ns.response(404, "No such batch", error)
    @ns.expect(list_args)
    @ns.marshal_list_with(recruiter)
    def get(self):
        """Recruiters in the order they recruit (rank, then age), with their costs."""
        batch = list_args.parse_args()["batch"]
        with state().db.read() as s:
            return recruiters.recruiter_dicts(s, recruiters.list_recruiters(s, batch))

    @ns.response(400, "Invalid recruiter, or its provider is not configured here", error)
    @ns.response(201, "Added", recruiter)
    @ns.response(200, "dry_run: what it would rent now and why; nothing stored", recruitment_plan)
    @ns.expect(recruiter_in, add_args, validate=True)
    def post(self):
        """Add a recruiter: hosts are rented for the batch while it has tasks to do, within
        max_workers, max_hourly_cost and budget, and deleted once idle for idle_timeout.
        With dry_run, nothing is stored nor rented: the answer is the plan it would make now."""
        st = state()
        spec = dict(ns.payload)
        if spec.pop("dry_run", False) or add_args.parse_args()["dry_run"]:
            checked = recruiters.check_recruiter(spec, st.providers)
            provider = checked["provider"]
            check_reachable(st.server_url(provider), f"the hosts of provider {provider}")
            return marshal(preview.dry_run(st.reconciler, checked), recruitment_plan), 200
        with st.db.write() as s:
            r = recruiters.create_recruiter(s, spec, st.providers)
            provider = spec["provider"]
            # Checked before anything is rented (the transaction is dropped on refusal).
            check_reachable(st.server_url(provider), f"the hosts of provider {provider}")
            out = recruiters.recruiter_dict(s, r)
        _wake()
        return marshal(out, recruiter), 201


@batches.ns.route("/<ref>/plan")
@access("user")
class BatchPlan(Resource):
    @batches.ns.response(404, "No such batch, or it has no recruiter", error)
    @batches.ns.marshal_with(recruitment_plan)
    def get(self, ref):
        """What recruitment would do now for the batch, and why: the hosts its recruiters would
        rent (provider, region, flavor, count, price, expected cost and time at the batch's
        measured rate) and the fitting offers ruled out (quota, budget, max hourly cost,
        unhealthy). Read-only: nothing is rented nor written."""
        return preview.batch_plan(state().reconciler, ref)


@ns.route("/cost")
@access("user")
class BatchCost(Resource):
    @ns.response(400, "No batch given", error)
    @ns.response(404, "No such batch", error)
    @ns.expect(cost_args)
    @ns.marshal_with(batch_cost)
    def get(self):
        """What the hosts of a batch cost: spent so far, per hour now, and how many live."""
        with state().db.read() as s:
            return ledger.batch_cost(s, cost_args.parse_args()["batch"])


@ns.route(f"/<{ID}:recruiter_id>")
@ns.response(404, "No such recruiter", error)
@access("user")
class OneRecruiter(Resource):
    @ns.marshal_with(recruiter)
    def get(self, recruiter_id):
        with state().db.read() as s:
            return recruiters.recruiter_dict(s, get_or_404(s, Recruiter, recruiter_id))

    @ns.response(200, "Deleted", deleted)
    def delete(self, recruiter_id):
        """Stop the recruiter renting; its live hosts stay and keep serving until idle."""
        with state().db.write() as s:
            live = recruiters.delete_recruiter(s, get_or_404(s, Recruiter, recruiter_id))
        _wake()
        return {"deleted": recruiter_id, "live_hosts": live}


# --- instances -----------------------------------------------------------------

# Not "Instance": the providers namespace has that model (a host as its cloud sees it).
instance = instances_ns.model("RentedInstance", {
    "id": fields.Integer, "name": fields.String(description="also its worker's name"),
    "recruiter_id": NullableInteger(description="null once its recruiter is deleted"),
    "batch_id": NullableInteger(description="null once its batch is deleted"),
    "provider": fields.String, "region": fields.String,
    "flavor": fields.String, "spot": fields.Boolean,
    "hourly_cost": NullableFloat(description="null: unknown"),
    "provider_id": NullableString(description="its id at the provider (null until it has one)"),
    "ip": NullableString, "status": fields.String(enum=ledger.INSTANCE_STATUSES),
    "error": NullableString, "created_at": fields.String, "deleted_at": NullableString,
    "cost": fields.Float(description="closed cost, or what it has cost so far"),
    "age": fields.Float(description="seconds since it was asked of the provider"),
})
page = instances_ns.model("RentedInstancePage", {
    "items": fields.List(fields.Nested(instance)),
    "next": NullableInteger(description="cursor of the next page (null: the last)")})

instance_args = reqparse.RequestParser()
instance_args.add_argument("status", choices=ledger.INSTANCE_STATUSES + ["live"],
                           help="a status, or live (creating, deploying, running or deleting: "
                                "every host still billed)")
instance_args.add_argument("provider")
instance_args.add_argument("recruiter_id", type=natural_id)
instance_args.add_argument("batch", help="batch id or name")
instance_args.add_argument("after", type=natural_id, help="cursor: the last id of the previous page")
instance_args.add_argument("limit", type=inputs.int_range(1, 1000), default=100)


@instances_ns.route("")
@access("user")
class Instances(Resource):
    @instances_ns.response(400, "Invalid filter", instances_error)
    @instances_ns.response(404, "No such batch", instances_error)
    @instances_ns.expect(instance_args)
    @instances_ns.marshal_with(page)
    @instances_ns.doc(id="list_rented_instances")   # unlike the providers' get_instances
    def get(self):
        """A page of rented hosts, newest first; pass `next` back as `after` for the next one."""
        a = instance_args.parse_args()
        with state().db.read() as s:
            rows, nxt = ledger.list_instances(s, **a)
            return {"items": [ledger.instance_dict(i) for i in rows], "next": nxt}


@instances_ns.route(f"/<{ID}:instance_id>")
@instances_ns.response(404, "No such instance", instances_error)
@access("user")
class OneInstance(Resource):
    @instances_ns.marshal_with(instance)
    @instances_ns.doc(id="get_rented_instance")
    def get(self, instance_id):
        with state().db.read() as s:
            return ledger.instance_dict(get_or_404(s, Instance, instance_id))
