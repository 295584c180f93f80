"""The web UI under /ui: server-rendered pages whose small scripts poll the REST API (and two
compact endpoints of this blueprint) to stay live without reloading. No build step: the
templates and static files here are all there is.

Pages only read. Every change goes through a POST, PUT or DELETE, made by the page's
script with the session's cookie and its CSRF token (scitq.server.ui.sessions): the API token
given at login stays on the server.
With auth on, the pages themselves are open (they hold no data, and the login page must be
reachable); the data is behind the API's check, and this blueprint's JSON is for users and
admins (scitq.server.access).
"""
from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for

from scitq.errors import BadRequest, Forbidden, ScitqError
from scitq.server import task_store, rollups, tokens
from scitq.server.access import access
from scitq.server.models import MAX_ID
from scitq.server.ui import dashboard as dash
from scitq.server.ui import sessions
from scitq.status import Role

UI_ROLES = (Role.ADMIN.value, Role.USER.value)

PAGES = [("ui.dashboard_page", "Dashboard"), ("ui.tasks_page", "Tasks"),
         ("ui.workers_page", "Workers"), ("ui.recruiters_page", "Recruiters & hosts"),
         ("ui.jobs_page", "Jobs")]


def _state():
    return current_app.extensions["scitq"]


def create_blueprint():
    bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates",
                   static_folder="static", static_url_path="/static")

    @bp.context_processor
    def page_context():
        # The session's CSRF token reaches the scripts through a <meta> tag; the API token never.
        found = sessions.find(_state().db, request.cookies.get(sessions.COOKIE)) if _state().auth else None
        return {"csrf": found[1] if found else None, "auth_on": _state().auth, "pages": PAGES}

    @bp.errorhandler(ScitqError)
    def scitq_error(e):
        return jsonify(e.to_dict()), e.http_status

    # --- pages ---------------------------------------------------------------------

    @bp.get("/")
    @access("public")
    def dashboard_page():
        return render_template("dashboard.html", page="ui.dashboard_page")

    @bp.get("/tasks")
    @access("public")
    def tasks_page():
        return render_template("tasks.html", page="ui.tasks_page")

    @bp.get("/tasks/<int:task_id>")
    @access("public")
    def task_page(task_id):
        return render_template("task.html", page="ui.tasks_page", task_id=task_id)

    @bp.get("/workers")
    @access("public")
    def workers_page():
        return render_template("workers.html", page="ui.workers_page")

    @bp.get("/recruiters")
    @access("public")
    def recruiters_page():
        return render_template("recruiters.html", page="ui.recruiters_page")

    @bp.get("/jobs")
    @access("public")
    def jobs_page():
        return render_template("jobs.html", page="ui.jobs_page")

    @bp.route("/login", methods=["GET", "POST"])
    @access("public")
    def login():
        """Exchange the API token for a session (a cookie of a random id). With auth off
        there is nothing to log in to: the page says so."""
        if request.method == "GET" or not _state().auth:
            return render_template("login.html", page=None, next=_next_url())
        token = (request.form.get("token") or "").strip()
        if not token:
            return render_template("login.html", page=None, next=_next_url(),
                                   error="give a token"), 400
        try:                        # a typo is told here, not by every call of every page
            principal = tokens.authenticate(_state().db, f"Bearer {token}")
            if principal.role not in UI_ROLES:
                raise Forbidden("a worker token cannot use the UI: log in with a user's token")
        except ScitqError as err:
            return render_template("login.html", page=None, next=_next_url(),
                                   error=err.message), err.http_status
        sid, _ = sessions.open_session(_state().db, principal)
        answer = redirect(_next_url())
        answer.set_cookie(sessions.COOKIE, sid, httponly=True, samesite="Lax", secure=request.is_secure,
                          path="/")
        return answer

    @bp.post("/logout")
    @access("public")
    def logout():
        sid = request.cookies.get(sessions.COOKIE)
        if _state().auth and sid:
            sessions.caller(_state().db, request)      # its CSRF token: no other site logs one out
            sessions.close_session(_state().db, sid)
        answer = redirect(url_for("ui.login"))
        answer.delete_cookie(sessions.COOKIE, path="/")
        return answer

    # --- compact JSON for the live views -------------------------------------------------

    @bp.get("/api/dashboard")
    @access("user")
    def dashboard_json():
        with _state().db.read() as s:
            return jsonify(dash.dashboard(s))

    @bp.get("/api/charts")
    @access("user")
    def chart_json():
        """Per-minute series of a batch (?batch=id or name) or of every batch, from the rollups."""
        minutes = _int_arg("minutes", 60, 1, rollups.MAX_MINUTES)
        with _state().db.read() as s:
            ref = request.args.get("batch")
            batch_id = task_store.get_batch(s, ref).id if ref else rollups.ALL
            return jsonify(rollups.chart(s, batch_id, minutes))

    @bp.get("/api/task-runs")
    @access("user")
    def task_runs_json():
        """The latest attempt of each task of a page (?ids=1,2,3): worker, start and end."""
        ids = _ids_arg()
        with _state().db.read() as s:
            return jsonify(dash.latest_runs(s, ids))

    @bp.get("/api/worker-activity")
    @access("user")
    def worker_activity_json():
        """Per worker (?ids=1,2): tasks succeeded and failed (from the rollups), and those
        it runs now."""
        ids = _ids_arg()
        with _state().db.read() as s:
            current = dash.current_tasks(s, ids)
            return jsonify({wid: dict(c, current=current[wid])
                            for wid, c in rollups.worker_counts(s, ids).items()})

    @bp.post("/api/batches/<ref>/relaunch-failed")
    @access("user")
    def relaunch_failed(ref):
        """Relaunch every failed task of the batch (the API relaunches one task at a time)."""
        st = _state()
        with st.db.write() as s:
            batch = task_store.get_batch(s, ref)
            name = batch.name
            n = dash.relaunch_failed(s, batch)
        if n:
            st.dispatcher.wake()
        return jsonify({"batch": name, "relaunched": n})

    return bp


MAX_IDS = 1000     # ids a page may ask about at once


def _ids_arg():
    raw = request.args.get("ids", "")
    try:
        ids = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise BadRequest("ids: a comma-separated list of integers") from None
    if len(ids) > MAX_IDS or any(not 0 < i <= MAX_ID for i in ids):
        raise BadRequest(f"ids: at most {MAX_IDS} ids, each from 1 to {MAX_ID}")
    return ids


def _int_arg(name, default, low, high):
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: an integer from {low} to {high}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}: an integer from {low} to {high}")
    return value


def _next_url():
    """Where to go after logging in: a path of this site only (never another host)."""
    target = request.values.get("next") or ""
    # A browser drops tabs and line breaks from a URL (`/\t/evil.example` is `//evil.example`),
    # and a line break in a Location header is no answer at all: no control character passes.
    if not target.startswith("/") or target.startswith("//") or "\\" in target \
            or any(c < " " or c == "\x7f" for c in target):
        return url_for("ui.dashboard_page")
    return target
