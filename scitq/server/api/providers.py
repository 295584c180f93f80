"""Providers: the clouds (and machines) hosts come from, their flavors, quotas and instances."""
from flask_restx import Namespace, Resource, fields, inputs, reqparse

from scitq.server.access import access
from scitq.server.api import ERROR_FIELDS, NullableFloat, NullableString, state
from scitq.server.deploys import check_reachable
from scitq.server.models import MAX_INT
from scitq.server.providers import query_flavors

ns = Namespace("providers", description="Where hosts come from: flavors, quotas, instances")

error = ns.model("Error", ERROR_FIELDS)
provider = ns.model("Provider", {"name": fields.String, "configured": fields.Boolean,
                                 "error": NullableString(description="why it cannot work, if so")})
flavor = ns.model("Flavor", {
    "provider": fields.String, "region": fields.String, "name": fields.String,
    "cpu": fields.Integer, "ram": fields.Float(description="GiB"), "disk": fields.Float(description="GiB"),
    "gpu": fields.Integer, "gpu_model": NullableString,
    "hourly_cost": NullableFloat(description="null: unknown"),
    "spot": fields.Boolean, "updated_at": fields.String,
})
quota = ns.model("Quota", {"region": fields.String, "resource": fields.String,
                           "used": fields.Float, "limit": NullableFloat(description="null: unlimited")})
instance = ns.model("Instance", {
    "provider": fields.String, "id": fields.String, "name": fields.String, "region": fields.String,
    "flavor": fields.String, "status": fields.String, "ip": NullableString,
    "private_ip": NullableString, "user": NullableString, "tags": fields.Raw,
    "created_at": NullableString,
})
refreshed = ns.model("CatalogRefreshed", {"provider": fields.String,
                                          "flavors": fields.Integer(description="flavors read")})
released = ns.model("InstanceDeleted", {"deleted": fields.String(description="its id")})
create_in = ns.model("InstancesIn", {
    "flavor": fields.String(required=True, min_length=1, max_length=128),
    "region": fields.String(required=True, min_length=1, max_length=64),
    "count": fields.Integer(min=1, max=100, default=1),
    "spot": fields.Boolean(default=False),
    "max_price": fields.Float(description="spot: US dollars per hour above 0, or -1 (up to the "
                                          "on-demand price)"),
})

flavor_args = reqparse.RequestParser()
flavor_args.add_argument("provider")
flavor_args.add_argument("region")
flavor_args.add_argument("min_cpu", type=inputs.int_range(0, MAX_INT))
flavor_args.add_argument("min_ram", type=float)
flavor_args.add_argument("min_disk", type=float)
flavor_args.add_argument("gpu", type=inputs.boolean)
flavor_args.add_argument("max_cost", type=float)
flavor_args.add_argument("spot", type=inputs.boolean)
flavor_args.add_argument("limit", type=inputs.int_range(1, 5000), default=200)

region_arg = reqparse.RequestParser()
region_arg.add_argument("region", required=True)


def providers():
    return state().providers


@ns.route("")
@access("user")
class Providers(Resource):
    @ns.marshal_list_with(provider)
    def get(self):
        """Every provider scitq knows, whether this server has it configured, and if it works."""
        return providers().status()


@ns.route("/flavors")
@access("user")
class Flavors(Resource):
    @ns.response(400, "Invalid filter", error)
    @ns.expect(flavor_args)
    @ns.marshal_list_with(flavor)
    def get(self):
        """The flavor catalog, filtered, cheapest first (run a refresh to fill it)."""
        a = flavor_args.parse_args()
        with state().db.read() as s:
            return query_flavors(s, **a)


@ns.route("/<string:name>/regions")
@ns.response(400, "Unknown provider, not configured here, or unusable", error)
@ns.response(502, "The provider failed or could not be reached", error)
@access("user")
class Regions(Resource):
    @ns.response(200, "Its region names", fields.List(fields.String))
    def get(self, name):
        p = providers().get(name)
        p.check()
        return p.regions()


@ns.route("/<string:name>/refresh")
@ns.response(400, "Unknown provider, not configured here, or unusable", error)
@ns.response(502, "The provider failed or could not be reached", error)
@access("admin")
class Refresh(Resource):
    @ns.response(200, "Refreshed", refreshed)
    def post(self, name):
        """Read the provider's flavors and prices into the catalog."""
        n = providers().refresh_catalog(state().db, name)
        return {"provider": name, "flavors": n}


@ns.route("/<string:name>/quotas")
@ns.response(400, "Unknown provider, not configured here, or unusable", error)
@ns.response(502, "The provider failed or could not be reached", error)
@access("user")
class Quotas(Resource):
    @ns.expect(region_arg)
    @ns.marshal_list_with(quota)
    def get(self, name):
        p = providers().get(name)
        p.check()
        return [q.to_dict() for q in p.quotas(region_arg.parse_args()["region"])]


@ns.route("/<string:name>/instances")
@ns.response(400, "Unknown provider, not configured here, or unusable", error)
@ns.response(502, "The provider failed or could not be reached", error)
@access("user", write="admin")
class Instances(Resource):
    @ns.marshal_list_with(instance)
    def get(self, name):
        """The provider's scitq-tagged instances, as the provider sees them."""
        providers().get(name).check()
        with state().db.read() as s:
            return providers().instances(s, name)

    @ns.response(409, "No capacity, or a quota would be exceeded", error)
    @ns.expect(create_in, validate=True)
    @ns.marshal_list_with(instance, code=201)
    def post(self, name):
        """Create hosts and wait until they run (the server's SSH key is installed on them)."""
        body = ns.payload
        providers().get(name)       # an unknown provider says so first
        check_reachable(state().server_url(name), f"the hosts of provider {name}")
        made = providers().create(name, body["flavor"], body["region"], body.get("count", 1),
                                  body.get("spot", False), body.get("max_price"))
        return [i.to_dict() for i in made], 201


@ns.route("/<string:name>/instances/<string:instance_id>")
@ns.response(400, "Unknown provider, not configured here, or unusable", error)
@ns.response(502, "The provider failed or could not be reached", error)
@access("user", write="admin")
class OneInstance(Resource):
    @ns.response(404, "No such instance", error)
    @ns.marshal_with(instance)
    def get(self, name, instance_id):
        return providers().get(name).get(instance_id).to_dict()

    @ns.response(200, "Deleted (or released)", released)
    def delete(self, name, instance_id):
        """Delete (or, for static hosts, release) an instance; deleting one gone is fine."""
        providers().get(name).delete(instance_id)
        return {"deleted": instance_id}
