"""Who may call each route. Every view declares it with @access, one check reads it before
each request, and the app refuses to start while a route declares nothing (install()).

Levels, each reached by the roles of the levels above it too:
- public: anyone, without a token (the API's description, the UI's pages and login, health
  checks, static files, the wheelhouse);
- worker: a worker token on its own worker only (the route's worker_id, ref or execution_id
  must be its own), and users and admins;
- user: users and admins;
- admin: admins only.
Reads (GET, HEAD, OPTIONS) and writes may need different levels: @access("user", write="admin").
The check runs while the server setting named by `when` is on (auth; /metrics has its own).
"""
import functools
from dataclasses import dataclass

from flask import current_app, g, jsonify, request
from sqlalchemy import select

from scitq.errors import Forbidden, ScitqError
from scitq.server.models import Execution, Worker
from scitq.status import Role

LEVELS = ("public", "worker", "user", "admin")
REACH = {Role.WORKER.value: 1, Role.USER.value: 2, Role.ADMIN.value: 3}   # index in LEVELS
READS = ("GET", "HEAD", "OPTIONS")
REFUSED = {"worker": "this needs a worker's, a user's or an admin's token",
           "user": "this needs a user's or an admin's token: a worker token reaches only its "
                   "own worker's calls",
           "admin": "this needs an admin token"}
OWNED = ("worker_id", "ref", "execution_id")    # the URL arguments a worker token must own
ATTRIBUTE = "scitq_access"


@dataclass(frozen=True)
class Access:
    read: str
    write: str
    when: str = "auth"

    def level(self, method):
        return self.read if method in READS else self.write


def access(read, write=None, when="auth"):
    """Declare who may call a view (a function, or a flask-restx Resource class)."""
    for level in (read, write or read):
        if level not in LEVELS:
            raise ValueError(f"unknown access level {level!r}: one of {', '.join(LEVELS)}")
    rule = Access(read, write or read, when)

    def declare(view):
        setattr(view, ATTRIBUTE, rule)
        return view
    return declare


def declared(view):
    """The Access of a view function (or of the Resource class it was made from), or None."""
    return getattr(view, ATTRIBUTE, None) or getattr(getattr(view, "view_class", None), ATTRIBUTE, None)


def install(app, public=()):
    """Declare the framework's own views in `public` (static files, the API's description),
    refuse to start while any route declares nothing, and check every request."""
    for endpoint in public:
        view = app.view_functions.get(endpoint)
        if view is not None and declared(view) is None:
            app.view_functions[endpoint] = access("public")(functools.wraps(view)(
                lambda *args, _view=view, **kwargs: _view(*args, **kwargs)))
    missing = sorted(f"{rule.rule} ({rule.endpoint})" for rule in app.url_map.iter_rules()
                     if declared(app.view_functions.get(rule.endpoint)) is None)
    if missing:
        raise RuntimeError(f"routes with no access declared (@access): {', '.join(missing)}")
    app.before_request(check)


def check():
    """Answer 401 or 403 (one JSON line) unless the caller reaches this route."""
    view = current_app.view_functions.get(request.endpoint)
    if view is None:            # no route matched: the 404 or 405 follows
        return None
    rule = declared(view) or Access("admin", "admin")    # install() refuses this; closed anyway
    level = rule.level(request.method)
    state = current_app.extensions["scitq"]
    if level == "public" or not getattr(state, rule.when):
        return None
    from scitq.server.ui import sessions
    try:
        principal = sessions.caller(state.db, request)
        reach(state.db, principal, level, request.view_args or {})
    except ScitqError as err:
        return jsonify(err.to_dict()), err.http_status
    g.principal = principal
    return None


def reach(db, principal, level, view_args):
    """Forbidden unless the principal's role reaches the level (a worker: on its own objects)."""
    if REACH.get(principal.role, 0) < LEVELS.index(level):
        raise Forbidden(REFUSED[level])
    if principal.role == Role.WORKER.value and any(k in view_args for k in OWNED):
        _own(db, principal, view_args)


def _own(db, principal, view_args):
    """A worker token reaches only its own worker and its executions (a route without such an
    argument is registration, whose name tokens.bind_worker checks)."""
    if principal.worker_id is None:
        raise Forbidden("this worker token has not registered a worker yet")
    if "worker_id" in view_args and view_args["worker_id"] != principal.worker_id:
        raise Forbidden("a worker token only reaches its own worker")
    if "ref" in view_args and view_args["ref"] != str(principal.worker_id):
        with db.read() as s:
            worker = s.scalar(select(Worker.id).where(Worker.name == view_args["ref"]))
        if worker != principal.worker_id:
            raise Forbidden("a worker token only reaches its own worker")
    if "execution_id" in view_args:
        with db.read() as s:
            owner = s.scalar(select(Execution.worker_id).where(Execution.id == view_args["execution_id"]))
        if owner != principal.worker_id:
            raise Forbidden("a worker token only reaches its own worker's executions")
