"""The REST API under /api/v1: one Flask-RESTX namespace per resource."""
import logging

from flask import Blueprint, current_app, g, request
from flask_restx import Api, fields, inputs
from werkzeug.exceptions import HTTPException

from scitq.errors import ScitqError
from scitq.server.models import MAX_ID

ID = f"int(max={MAX_ID})"            # URL converter of ids: larger numbers are a 404
natural_id = inputs.int_range(0, MAX_ID)

log = logging.getLogger(__name__)


class NullableString(fields.String):
    __schema_type__ = ["string", "null"]


class NullableInteger(fields.Integer):
    __schema_type__ = ["integer", "null"]


class NullableFloat(fields.Float):
    __schema_type__ = ["number", "null"]


class NullableBoolean(fields.Boolean):
    __schema_type__ = ["boolean", "null"]


class NullableList(fields.List):
    def schema(self):
        return dict(super().schema(), type=["array", "null"])


class NullableNested(fields.Nested):
    """An object of a model, or null (allow_null: a missing one is output as null).

    Swagger 2.0 has no anyOf nor null type: a nullable object is its model under allOf (a
    $ref takes no sibling keys) with the x-nullable extension, as code generators and
    schemathesis read it."""

    def __init__(self, model, **kwargs):
        super().__init__(model, allow_null=True, **kwargs)

    def schema(self):
        schema = {k: v for k, v in super().schema().items() if k not in ("$ref", "allOf")}
        return dict(schema, allOf=[{"$ref": f"#/definitions/{self.nested.name}"}],
                    **{"x-nullable": True})


class AnyJSON(fields.Raw):
    """Any JSON value: null, a string, an object..."""
    __schema_type__ = None


class IdOrName(fields.Raw):
    """An id (integer) or a name (string), as in depends_on."""
    __schema_type__ = ["integer", "string"]


# The body of every error answer (ScitqApi.handle_error). Each namespace declares it as its
# "Error" model and documents, per operation, the 4xx codes that answer it.
ERROR_FIELDS = {
    "error": fields.String(required=True, description="what went wrong, in one sentence"),
    "detail": AnyJSON(required=True, description="more, when there is: the fields a "
                                                 "validation refused, what exists already..."),
}

MAX_DETAIL = 300    # characters of a validation message echoed back (never a 10 MB command)


class ScitqApi(Api):
    """Every error answer is JSON {"error": ..., "detail": ...}; never a traceback."""

    def handle_error(self, e):
        if isinstance(e, ScitqError):
            code, body = e.http_status, e.to_dict()
            if getattr(e, "retry_after", None):
                response = self.make_response(body, code)
                response.headers["Retry-After"] = str(e.retry_after)
                return response
        elif isinstance(e, HTTPException):
            data = getattr(e, "data", None) or {}
            code = e.code or 500
            body = {"error": data.get("message") or e.description or e.name,
                    "detail": _clip(data.get("errors"))}
        elif _unavailable(e):
            # Every database connection busy (an overload) or the database unreachable: the
            # caller retries later; a worker's calls back off and try again.
            log.warning("%s: %s: answered 503", _where(), str(e).splitlines()[0][:200])
            response = self.make_response({"error": "the server is overloaded or its database "
                                           "unreachable: retry later", "detail": type(e).__name__}, 503)
            response.headers["Retry-After"] = "5"
            return response
        else:
            log.exception("unexpected error on %s", _where())
            code, body = 500, {"error": "internal server error", "detail": type(e).__name__}
        return self.make_response(body, code)


def _unavailable(e):
    from sqlalchemy.exc import OperationalError, TimeoutError as PoolTimeout
    return isinstance(e, PoolTimeout) or (isinstance(e, OperationalError) and e.connection_invalidated)


def _clip(detail):
    if isinstance(detail, dict):
        return {k: _clip(v) for k, v in detail.items()}
    if isinstance(detail, str) and len(detail) > MAX_DETAIL:
        return detail[:MAX_DETAIL] + f"... ({len(detail)} characters)"
    return detail


def _where():
    return f"{request.method} {request.path}"


def principal():
    """Who calls (a tokens.Principal), or None when auth is off."""
    return g.get("principal")


def state():
    """The server's shared objects (db, outputs, notifier, dispatcher)."""
    return current_app.extensions["scitq"]


# Swagger 2.0 has no bearer scheme of its own: the header is an API key whose value is
# "Bearer TOKEN" (OpenAPI 3's http/bearer is the same header on the wire).
AUTHORIZATIONS = {"bearer": {
    "type": "apiKey", "in": "header", "name": "Authorization",
    "description": "Type `Bearer ` and the token (`scitq token create NAME --role user`); a "
                   "server without --auth needs none."}}


def create_blueprint():
    from scitq.server.api import (batches, executions, jobs, providers, recruiters, tasks, tokens,
                                  workers)

    bp = Blueprint("api", __name__, url_prefix="/api/v1")
    api = ScitqApi(bp, version="1", title="scitq API", doc="/docs", authorizations=AUTHORIZATIONS,
                   security="bearer",
                   description="Batches, tasks, executions and workers of a scitq server.")
    for namespace in (batches.ns, tasks.ns, executions.ns, workers.ns, providers.ns, jobs.ns,
                      recruiters.ns, recruiters.instances_ns, tokens.ns):
        api.add_namespace(namespace)
    return bp
