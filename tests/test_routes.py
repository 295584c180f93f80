"""Every route of the app against who may call it, on both databases: one table of the codes
each caller gets (no token, a bad token, the worker's own token, another worker's, a user's,
an admin's), whose keys must be the app's routes, so a new route fails here until it is
written in. Each call is made on real objects (a batch, a task, two workers, an execution of
the first, a job, a recruiter, a rented host); a call that changed something gets fresh ones.

Codes: 401 without a token or with a bad one, except on public routes; 403 for a role the
route's declaration does not reach; for the roles it reaches, its answer to the input, as the
table says (a 404 of a provider that is not configured, a 409 of a job that has not failed...).
"""
import re
import secrets
from collections import namedtuple

import pytest

from apicalls import call_as as call, dispatch
from scitq.server import create_app
from scitq.server.access import declared
from scitq.server.models import Instance, Recruiter

CALLERS = ("none", "bad", "own", "other", "user", "admin")
Codes = namedtuple("Codes", CALLERS)
BAD = "scitq_" + "x" * 43
ID = "int(max=9223372036854775807)"

PUBLIC_OK = Codes(200, 200, 200, 200, 200, 200)
USER_READ = Codes(401, 401, 403, 403, 200, 200)
ADMIN_ONLY = Codes(401, 401, 403, 403, 403, 200)


def everyone(code):
    return Codes(*[code] * len(CALLERS))


def user(code, admin=None):
    """A user route: refused to workers, `code` for users and admins (or `admin` for an admin)."""
    return Codes(401, 401, 403, 403, code, code if admin is None else admin)


def worker(own, user_code=None):
    """A worker-own route: `own` for its worker, 403 for another worker, users and admins too."""
    return Codes(401, 401, own, 403, own if user_code is None else user_code,
                 own if user_code is None else user_code)


# (method, rule) -> the code each caller gets.
EXPECTED = {
    ("GET", "/"): everyone(302),
    ("GET", "/healthz"): PUBLIC_OK,
    ("GET", "/readyz"): PUBLIC_OK,
    ("GET", "/metrics"): USER_READ,
    ("GET", "/static/<path:filename>"): everyone(404),          # the app serves no file there
    ("GET", "/swaggerui/<path:filename>"): PUBLIC_OK,
    ("GET", "/wheelhouse/"): everyone(404),                     # none built yet
    ("GET", "/wheelhouse/<path:name>"): everyone(404),
    # The UI: pages and login open, the data for users and admins.
    ("GET", "/ui/"): PUBLIC_OK,
    ("GET", "/ui/tasks"): PUBLIC_OK,
    ("GET", "/ui/tasks/<int:task_id>"): PUBLIC_OK,
    ("GET", "/ui/workers"): PUBLIC_OK,
    ("GET", "/ui/recruiters"): PUBLIC_OK,
    ("GET", "/ui/jobs"): PUBLIC_OK,
    ("GET", "/ui/login"): PUBLIC_OK,
    ("POST", "/ui/login"): everyone(400),                       # no token in the form
    ("POST", "/ui/logout"): everyone(302),
    ("GET", "/ui/static/<path:filename>"): PUBLIC_OK,
    ("GET", "/ui/api/dashboard"): USER_READ,
    ("GET", "/ui/api/charts"): USER_READ,
    ("GET", "/ui/api/task-runs"): USER_READ,
    ("GET", "/ui/api/worker-activity"): USER_READ,
    ("POST", "/ui/api/batches/<ref>/relaunch-failed"): USER_READ,
    # The API's description.
    ("GET", "/api/v1/"): everyone(404),                         # the description is at /docs
    ("GET", "/api/v1/docs"): PUBLIC_OK,
    ("GET", "/api/v1/swagger.json"): PUBLIC_OK,
    # Batches and tasks: users.
    ("GET", "/api/v1/batches"): USER_READ,
    ("POST", "/api/v1/batches"): user(201),
    ("GET", "/api/v1/batches/<ref>"): USER_READ,
    ("PUT", "/api/v1/batches/<ref>"): USER_READ,
    ("DELETE", "/api/v1/batches/<ref>"): user(409),             # its task is assigned
    ("POST", "/api/v1/batches/<ref>/pause"): USER_READ,
    ("POST", "/api/v1/batches/<ref>/resume"): USER_READ,
    ("POST", "/api/v1/batches/<ref>/stop"): USER_READ,
    ("GET", "/api/v1/batches/<ref>/wait"): USER_READ,
    ("GET", "/api/v1/batches/<ref>/plan"): user(400),     # its recruiter's provider: not configured
    ("GET", "/api/v1/tasks"): USER_READ,
    ("POST", "/api/v1/tasks"): user(201),
    ("POST", "/api/v1/tasks/bulk"): user(201),
    ("GET", f"/api/v1/tasks/<{ID}:task_id>"): USER_READ,
    ("PUT", f"/api/v1/tasks/<{ID}:task_id>"): user(409),        # a task assigned keeps its command
    ("DELETE", f"/api/v1/tasks/<{ID}:task_id>"): user(409),     # assigned
    ("POST", f"/api/v1/tasks/<{ID}:task_id>/force"): user(409),  # neither waiting nor canceled
    ("POST", f"/api/v1/tasks/<{ID}:task_id>/kill"): USER_READ,
    ("POST", f"/api/v1/tasks/<{ID}:task_id>/pause"): user(409),  # assigned, not running yet
    ("POST", f"/api/v1/tasks/<{ID}:task_id>/resume"): user(409),
    ("POST", f"/api/v1/tasks/<{ID}:task_id>/relaunch"): user(409),   # not ended
    ("GET", f"/api/v1/tasks/<{ID}:task_id>/output"): USER_READ,
    # Executions: the list for users, one execution for its own worker.
    ("GET", "/api/v1/executions"): USER_READ,
    ("GET", f"/api/v1/executions/<{ID}:execution_id>"): worker(200),
    ("GET", f"/api/v1/executions/<{ID}:execution_id>/output"): worker(200),
    ("POST", f"/api/v1/executions/<{ID}:execution_id>/output"): worker(200),
    ("POST", f"/api/v1/executions/<{ID}:execution_id>/cache"): worker(200),
    # Workers: registration for worker tokens (their own name), the rest of the list for users.
    ("GET", "/api/v1/workers"): USER_READ,
    ("POST", "/api/v1/workers"): worker(201),
    ("GET", "/api/v1/workers/<ref>"): worker(200),
    ("PUT", "/api/v1/workers/<ref>"): user(200),
    ("DELETE", "/api/v1/workers/<ref>"): user(200),
    ("POST", f"/api/v1/workers/<{ID}:worker_id>/poll"): worker(200),
    ("POST", f"/api/v1/workers/<{ID}:worker_id>/reports"): worker(200),
    # Jobs: read by users, made and retried by admins.
    ("GET", "/api/v1/jobs"): USER_READ,
    ("POST", "/api/v1/jobs/deploy"): ADMIN_ONLY._replace(admin=201),
    ("POST", "/api/v1/jobs/teardown"): ADMIN_ONLY._replace(admin=201),
    ("GET", f"/api/v1/jobs/<{ID}:job_id>"): USER_READ,
    ("GET", f"/api/v1/jobs/<{ID}:job_id>/log"): USER_READ,
    ("POST", f"/api/v1/jobs/<{ID}:job_id>/retry"): user(403, admin=409),   # it has not failed
    # Providers (none configured here: a name is a 400): read by users, hosts by admins.
    ("GET", "/api/v1/providers"): USER_READ,
    ("GET", "/api/v1/providers/flavors"): USER_READ,
    ("GET", "/api/v1/providers/<string:name>/regions"): user(400),
    ("GET", "/api/v1/providers/<string:name>/quotas"): user(400),
    ("POST", "/api/v1/providers/<string:name>/refresh"): user(403, admin=400),
    ("GET", "/api/v1/providers/<string:name>/instances"): user(400),
    ("POST", "/api/v1/providers/<string:name>/instances"): user(403, admin=400),
    ("GET", "/api/v1/providers/<string:name>/instances/<string:instance_id>"): user(400),
    ("DELETE", "/api/v1/providers/<string:name>/instances/<string:instance_id>"): user(403, admin=400),
    # Recruiters and the hosts they rented: users.
    ("GET", "/api/v1/recruiters"): USER_READ,
    ("POST", "/api/v1/recruiters"): user(400),                  # no host could reach this server
    ("GET", "/api/v1/recruiters/cost"): USER_READ,
    ("GET", f"/api/v1/recruiters/<{ID}:recruiter_id>"): USER_READ,
    ("DELETE", f"/api/v1/recruiters/<{ID}:recruiter_id>"): USER_READ,
    ("GET", "/api/v1/instances"): USER_READ,
    ("GET", f"/api/v1/instances/<{ID}:instance_id>"): USER_READ,
    # Tokens: admins only.
    ("GET", "/api/v1/tokens"): ADMIN_ONLY,
    ("POST", "/api/v1/tokens"): ADMIN_ONLY._replace(admin=201),
    ("DELETE", "/api/v1/tokens/<ref>"): ADMIN_ONLY,
}

# What each call sends beyond its URL: f(world) -> keyword arguments of the test client.
REQUESTS = {
    ("GET", "/metrics"): {},
    ("GET", "/swaggerui/<path:filename>"): {"path": {"filename": "droid-sans.css"}},
    ("GET", "/ui/static/<path:filename>"): {"path": {"filename": "app.css"}},
    ("GET", "/wheelhouse/<path:name>"): {"path": {"name": "index.html"}},
    ("GET", "/static/<path:filename>"): {"path": {"filename": "app.css"}},
    ("GET", "/ui/api/task-runs"): {"query_string": lambda w: {"ids": str(w.task)}},
    ("GET", "/ui/api/worker-activity"): {"query_string": lambda w: {"ids": str(w.own)}},
    ("POST", "/api/v1/batches"): {"json": lambda w: {"name": f"new-{secrets.token_hex(4)}"}},
    ("PUT", "/api/v1/batches/<ref>"): {"json": {"concurrency": 2}},
    ("GET", "/api/v1/batches/<ref>/wait"): {"query_string": {"timeout": 0}},
    ("POST", "/api/v1/tasks"): {"json": {"command": "true"}},
    ("POST", "/api/v1/tasks/bulk"): {"json": {"tasks": [{"command": "true"}]}},
    ("PUT", f"/api/v1/tasks/<{ID}:task_id>"): {"json": {"command": "false"}},
    ("POST", f"/api/v1/executions/<{ID}:execution_id>/output"): {
        "query_string": {"stream": "stdout", "offset": 0}, "data": b"out\n"},
    ("POST", f"/api/v1/executions/<{ID}:execution_id>/cache"): {"json": {"inputs": []}},
    ("POST", "/api/v1/workers"): {"json": lambda w: {"name": w.own_name, "batch": w.batch}},
    ("PUT", "/api/v1/workers/<ref>"): {"json": {"concurrency": 2}},
    ("POST", f"/api/v1/workers/<{ID}:worker_id>/poll"): {"json": {"wait": 0}},
    ("POST", f"/api/v1/workers/<{ID}:worker_id>/reports"): {"json": {"reports": []}},
    ("POST", "/api/v1/jobs/deploy"): {"json": {"hosts": ["127.0.0.1"], "server_url": "http://127.0.0.1:9"}},
    ("POST", "/api/v1/jobs/teardown"): {"json": {"hosts": ["127.0.0.1"]}},
    ("POST", "/api/v1/providers/<string:name>/instances"): {"json": {"flavor": "small", "region": "r1"}},
    ("POST", "/api/v1/recruiters"): {"json": lambda w: {"batch": w.batch, "provider": "local",
                                                        "max_workers": 1, "tasks_per_worker": 1}},
    ("GET", "/api/v1/recruiters/cost"): {"query_string": lambda w: {"batch": w.batch}},
    ("POST", "/api/v1/tokens"): {"json": lambda w: {"name": f"t-{secrets.token_hex(4)}", "role": "user"}},
}
READS = ("GET", "HEAD", "OPTIONS")


class World:
    """Fresh objects for the calls: a batch with one task, assigned to the first of two
    workers (each registered with its own token), a user and a spare token, a pending job,
    a recruiter and a host it rented."""

    def __init__(self, app, c, admin):
        self.admin, tag = admin, secrets.token_hex(4)
        self.batch, self.own_name, self.other_name = f"b-{tag}", f"wa-{tag}", f"wb-{tag}"
        made = {n: call(c, "POST", "/tokens", admin, 201, json={"name": n, "role": r})
                for n, r in ((self.own_name, "worker"), (self.other_name, "worker"),
                             (f"u-{tag}", "user"), (f"spare-{tag}", "user"))}
        self.tokens = {"none": None, "bad": BAD, "own": made[self.own_name]["token"],
                       "other": made[self.other_name]["token"], "user": made[f"u-{tag}"]["token"],
                       "admin": admin}
        self.spare = f"spare-{tag}"
        (self.task,) = call(c, "POST", "/tasks/bulk", admin, 201,
                            json={"batch": self.batch, "tasks": [{"command": "true"}]})["ids"]
        self.own = call(c, "POST", "/workers", self.tokens["own"], 201,
                        json={"name": self.own_name, "batch": self.batch})["id"]
        # Each worker serves a batch of its own: no task of another world reaches it.
        call(c, "POST", "/batches", admin, 201, json={"name": f"o-{tag}"})
        self.other = call(c, "POST", "/workers", self.tokens["other"], 201,
                          json={"name": self.other_name, "batch": f"o-{tag}"})["id"]
        dispatch(app)
        (held,) = call(c, "POST", f"/workers/{self.own}/poll", self.tokens["own"],
                       json={"wait": 0})["assignments"]
        self.execution = held["execution_id"]
        (self.job,) = [j["id"] for j in call(c, "POST", "/jobs/deploy", admin, 201, json={
            "hosts": ["127.0.0.1"], "server_url": "http://127.0.0.1:9", "name": f"j-{tag}"})]
        with app.extensions["scitq"].db.write() as s:
            batch_id = call(c, "GET", f"/batches/{self.batch}", admin)["id"]
            rec = Recruiter(batch_id=batch_id, provider="local", max_workers=1, tasks_per_worker=1,
                            concurrency=1, min_cpu=1)
            s.add(rec)
            s.flush()
            host = Instance(name=f"h-{tag}", recruiter_id=rec.id, batch_id=batch_id,
                            provider="local", region="r1", flavor="small")
            s.add(host)
            s.flush()
            self.recruiter, self.instance = rec.id, host.id

    def args(self, rule):
        """The value of each argument of a rule's URL."""
        ref = (self.own_name if rule.startswith("/api/v1/workers") else
               self.spare if rule.startswith("/api/v1/tokens") else self.batch)
        return {"ref": ref, "task_id": self.task, "execution_id": self.execution,
                "worker_id": self.own, "job_id": self.job, "recruiter_id": self.recruiter,
                "instance_id": "nope" if "providers" in rule else self.instance, "name": "nope"}


def _url(rule, world, given):
    values = {**world.args(rule), **given}
    return re.sub(r"<(?:[^:<>]+:)?(\w+)>", lambda m: str(values[m.group(1)]), rule)


def _kwargs(spec, world):
    return {k: (v(world) if callable(v) else v) for k, v in spec.items() if k != "path"}


@pytest.fixture
def served(db_url, tmp_path):
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "AUTH": True, "LEASE": 3})
    yield app
    app.extensions["scitq"].db.dispose()


def _routes(app):
    return {(m, r.rule) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}}


def test_every_route_is_in_the_table_and_declares_its_callers(served):
    assert set(EXPECTED) == _routes(served), "write each new route into EXPECTED"
    assert all(declared(served.view_functions[r.endpoint]) for r in served.url_map.iter_rules())


def test_each_caller_gets_what_the_table_says(served):
    c = served.test_client()
    admin = served.extensions["scitq"].new_admin_token
    world, got = World(served, c, admin), {}
    for (method, rule), expected in sorted(EXPECTED.items()):
        spec = REQUESTS.get((method, rule), {})
        for caller in CALLERS:
            headers = {"Authorization": f"Bearer {world.tokens[caller]}"} if world.tokens[caller] else {}
            r = c.open(_url(rule, world, spec.get("path", {})), method=method, headers=headers,
                       **_kwargs(spec, world))
            got[(method, rule, caller)] = r.status_code
            if r.status_code >= 400 and r.is_json:      # every refusal says why, in one line
                assert r.get_json()["error"], (method, rule, caller)
            if method not in READS and r.status_code < 400:     # it changed something
                world = World(served, c, admin)
    wrong = {k: (code, getattr(EXPECTED[k[:2]], k[2])) for k, code in got.items()
             if code != getattr(EXPECTED[k[:2]], k[2])}
    assert not wrong, "\n".join(f"{m} {r} as {who}: {code}, expected {want}"
                                for (m, r, who), (code, want) in sorted(wrong.items()))


def test_an_app_with_a_route_that_declares_nothing_does_not_start(tmp_path):
    from flask import Flask

    from scitq.server.access import access, install
    app = Flask(__name__)
    app.get("/declared")(access("user")(lambda: "x"))
    app.add_url_rule("/forgotten", "forgotten", lambda: "y")
    with pytest.raises(RuntimeError, match=r"/forgotten \(forgotten\)"):
        install(app)
    with pytest.raises(ValueError, match="unknown access level"):
        access("everyone")
