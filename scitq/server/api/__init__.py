"""The REST API under /api/v1: one Flask-RESTX namespace per resource."""
import logging

from flask import Blueprint, current_app
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


class IdOrName(fields.Raw):
    """An id (integer) or a name (string), as in depends_on."""
    __schema_type__ = ["integer", "string"]

MAX_DETAIL = 300    # characters of a validation message echoed back (never a 10 MB command)


class ScitqApi(Api):
    """Every error answer is JSON {"error": ..., "detail": ...}; never a traceback."""

    def handle_error(self, e):
        if isinstance(e, ScitqError):
            code, body = e.http_status, e.to_dict()
        elif isinstance(e, HTTPException):
            data = getattr(e, "data", None) or {}
            code = e.code or 500
            body = {"error": data.get("message") or e.description or e.name,
                    "detail": _clip(data.get("errors"))}
        else:
            log.exception("unexpected error on %s", _where())
            code, body = 500, {"error": "internal server error", "detail": type(e).__name__}
        return self.make_response(body, code)


def _clip(detail):
    if isinstance(detail, dict):
        return {k: _clip(v) for k, v in detail.items()}
    if isinstance(detail, str) and len(detail) > MAX_DETAIL:
        return detail[:MAX_DETAIL] + f"... ({len(detail)} characters)"
    return detail


def _where():
    from flask import request
    return f"{request.method} {request.path}"


def state():
    """The server's shared objects (db, outputs, notifier, dispatcher)."""
    return current_app.extensions["scitq"]


def create_blueprint():
    from scitq.server.api import batches, executions, jobs, providers, recruiters, tasks, workers

    bp = Blueprint("api", __name__, url_prefix="/api/v1")
    api = ScitqApi(bp, version="1", title="scitq API", doc="/docs",
                   description="Batches, tasks, executions and workers of a scitq server.")
    for namespace in (batches.ns, tasks.ns, executions.ns, workers.ns, providers.ns, jobs.ns,
                      recruiters.ns, recruiters.instances_ns):
        api.add_namespace(namespace)
    return bp
