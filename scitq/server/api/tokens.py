"""Tokens: who may call the API, and with which role (admin only)."""
from flask_restx import Namespace, Resource, fields, inputs, reqparse

from scitq.server import tokens
from scitq.server.access import access
from scitq.server.api import ERROR_FIELDS, NullableInteger, NullableString, state
from scitq.status import Role

ns = Namespace("tokens", description="API tokens and their roles (admin only)")

error = ns.model("Error", ERROR_FIELDS)
token = ns.model("Token", {
    "id": fields.Integer, "name": fields.String, "role": fields.String,
    "prefix": fields.String(description="its first characters (the token itself is never shown "
                                        "again)"),
    "worker_id": NullableInteger(description="a worker token: the worker it reaches"),
    "created_at": fields.String, "revoked_at": NullableString,
})
created = ns.inherit("NewToken", token, {
    "token": fields.String(description="the token: shown once, keep it (scitq reads SCITQ_TOKEN)")})
token_in = ns.model("TokenIn", {
    "name": fields.String(required=True, min_length=1, max_length=128),
    "role": fields.String(required=True, enum=[r.value for r in Role]),
})
list_args = reqparse.RequestParser()
list_args.add_argument("revoked", type=inputs.boolean, default=False, help="list revoked ones too")


@ns.route("")
@access("admin")
class Tokens(Resource):
    @ns.response(400, "Invalid argument", error)
    @ns.expect(list_args)
    @ns.marshal_list_with(token)
    def get(self):
        with state().db.read() as s:
            return [t.to_dict() for t in tokens.list_tokens(s, list_args.parse_args()["revoked"])]

    @ns.response(400, "Invalid name or role", error)
    @ns.expect(token_in, validate=True)
    @ns.marshal_with(created, code=201)
    def post(self):
        """Make a token; the answer holds it, once."""
        with state().db.write() as s:
            row, secret = tokens.create_token(s, ns.payload["name"], ns.payload["role"])
            return {**row.to_dict(), "token": secret}, 201


@ns.route("/<ref>")
@ns.param("ref", "token id, or name (every live token of that name)")
@ns.response(404, "No such token", error)
@access("admin")
class OneToken(Resource):
    @ns.marshal_list_with(token)
    def delete(self, ref):
        """Revoke: the token stops working at once on this server."""
        with state().db.write() as s:
            return [t.to_dict() for t in tokens.revoke(s, ref)]
