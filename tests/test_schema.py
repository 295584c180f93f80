"""Schemathesis against the API's own OpenAPI document, on both databases.

Every operation is fed generated requests: schemathesis' coverage cases (boundaries, missing
and wrong-typed fields, odd strings) and a few random valid and invalid ones, then, in a
second pass, valid ones on ids that exist. No answer may be a 5xx, and every answer must have
a status code, a content type and a body that its operation documents (a field may be null
only where it is declared nullable; an error is {"error", "detail"} with a documented code).

Bounded to a few minutes on two cores: few random examples per operation, derandomized, no
shrinking. LEASE is 3 s, so a generated poll (wait up to 60 s) hangs 1 s at most.
"""
import shutil
import tempfile
import time
import uuid

import pytest
from hypothesis import HealthCheck, Phase, given, settings

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance,  # noqa: E402
                                               response_schema_conformance,
                                               status_code_conformance)

from apicalls import acked, call, chunk, dispatch, poll, register, rep, submit  # noqa: E402
from scitq.server import create_app  # noqa: E402
from scitq.server.models import Instance, utcnow  # noqa: E402

LEASE = 3
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
RANDOM_EXAMPLES = 10       # per operation, valid and invalid, besides the coverage cases
ON_REAL_IDS = 8            # per operation with ids in its path: valid requests on objects that exist
PROVIDERS = {"static": {"hosts": [
    {"name": "lab1", "address": "192.0.2.10", "cpu": 8, "ram": 32, "disk": 100},
    {"name": "lab2", "address": "192.0.2.11", "cpu": 8, "ram": 32, "disk": 100, "region": "lab"}]}}
CONFIG = {"LEASE": LEASE, "PROVIDERS": PROVIDERS, "PUBLIC_URL": "https://scitq.example:9"}
BOUNDED = settings(max_examples=RANDOM_EXAMPLES, derandomize=True, database=None, deadline=None,
                   phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


def served_document():
    """The document the server serves at /api/v1/swagger.json (the tests check that the
    apps they run on each database serve this very one)."""
    data_dir = tempfile.mkdtemp(prefix="scitq-schema-")
    try:
        app = create_app({"DATA_DIR": data_dir, "DATABASE": f"sqlite:///{data_dir}/scitq.db", **CONFIG})
        document = app.test_client().get("/api/v1/swagger.json").get_json()
        app.extensions["scitq"].db.dispose()
        return document
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


DOCUMENT = served_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture
def app(db_url, tmp_path):
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, **CONFIG})
    yield app
    app.extensions["scitq"].db.dispose()


def seed(app, client, count):
    """`count` sets of objects of every kind, in the states that shape an answer (nulls
    included). Made before any generated request, while every worker is bound to its batch
    (a worker of no batch would take other batches' tasks). Returns each set's path
    parameters."""
    sets = []
    for n in range(count):
        batch = f"seed{n}"
        done, failed, running, pending = submit(client, "true", "false", "sleep 9", "echo",
                                                batch=batch)
        call(client, "POST", "/tasks", 201, json={
            "command": "cat $INPUT/x", "batch": batch, "name": f"full{n}", "container": "alpine",
            "container_options": "--env A=1", "inputs": ["http://127.0.0.1:9/x"], "timeout": 60,
            "depends_on": [pending], "retries": 2, "output": "file:///tmp/out/"})
        wid = register(client, f"worker{n}", concurrency=3, batch=batch, hostname="h", cpus=2)
        sets.append({"ref": batch, "task_id": done, "worker_id": wid,
                     "_tasks": (done, failed, running)})
    dispatch(app)
    for n, ids in enumerate(sets):
        wid, (done, failed, running) = ids["worker_id"], ids.pop("_tasks")
        assigned = {a["task_id"]: a["execution_id"] for a in poll(client, wid)["assignments"]}
        assert set(assigned) == {done, failed, running}, assigned
        acked(client, wid, rep(assigned[done], "running", pid=12),
              rep(assigned[failed], "running", pid=13), rep(assigned[running], "running", pid=14))
        acked(client, wid, rep(assigned[done], "succeeded", return_code=0, stdout=chunk(b"out\n")),
              rep(assigned[failed], "failed", return_code=1, error="boom", stderr=chunk(b"err")))
        register(client, f"idle{n}")                  # a worker with nulls: no batch, no stats
        jid = call(client, "POST", "/jobs/deploy", 201, json={"hosts": [f"host{n}.example"]})[0]["id"]
        rid = call(client, "POST", "/recruiters", 201, json={
            "batch": ids["ref"], "provider": "static", "min_cpu": 2, "max_workers": 1,
            "tasks_per_worker": 5, "concurrency": 2})["id"]
        with app.extensions["scitq"].db.write() as s:
            inst = Instance(name=f"rented{n}", recruiter_id=rid,
                            batch_id=call(client, "GET", f"/batches/{ids['ref']}")["id"],
                            provider="static", region="static", flavor="static-8c",
                            status="running", created_at=utcnow())
            s.add(inst)
            s.flush()
            ids.update(execution_id=assigned[failed], job_id=jid, recruiter_id=rid,
                       instance_id=inst.id, name="static")
    return sets


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_app(request, tmp_path_factory):
    """One app per database for every operation of the generated requests (an app per
    operation would double their time), with a set of objects so that small ids name
    something."""
    data_dir = tmp_path_factory.mktemp("schema")
    name = url = None
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir}/scitq.db"
    else:
        server = request.getfixturevalue("pg_cluster")
        name = f"scitq_schema_{uuid.uuid4().hex[:16]}"
        url = server.create_database(name)
    app = create_app({"DATA_DIR": data_dir, "DATABASE": url, **CONFIG})
    try:
        assert app.test_client().get("/api/v1/swagger.json").get_json() == DOCUMENT
        seed(app, app.test_client(), 1)
        yield app
    finally:
        app.extensions["scitq"].db.dispose()
        if name:
            server.drop_database(name)


@schema.parametrize()
@BOUNDED
def test_generated_requests(case, shared_app):
    response = case.call(app=shared_app)
    case.validate_response(response, checks=CHECKS)


def test_requests_on_objects_that_exist(app, client):
    """Valid requests whose path names objects that exist, in every state: what nulls and
    nested objects real answers hold must match the documented models. One set of objects
    per operation, so that what one deletes or kills leaves the next its own."""
    assert client.get("/api/v1/swagger.json").get_json() == DOCUMENT
    started = time.monotonic()
    operations = [op.ok() for op in schema.get_all_operations() if op.ok().path_parameters]
    sets = iter(seed(app, client, len(operations)))
    found = {}
    for operation in operations:
        ids = next(sets)
        if operation.path.startswith("/providers/"):       # a static host, not a rented row
            ids = dict(ids, instance_id="lab1")
        path = {p.name: ids[p.name] for p in operation.path_parameters}

        @settings(BOUNDED, max_examples=ON_REAL_IDS)
        @given(case=operation.as_strategy(path_parameters=path))
        def check(case):
            response = case.call(app=app)
            try:
                case.validate_response(response, checks=CHECKS)
            except BaseException as exc:       # noqa: BLE001 - every failure is gathered
                for failure in getattr(exc, "exceptions", [exc]):
                    key = (operation.label, getattr(failure, "title", type(failure).__name__))
                    found.setdefault(key, f"{case.method} {case.formatted_path} query={case.query} "
                                          f"body={str(case.body)[:300]}\n  -> {response.status_code} "
                                          f"{response.text[:300]!r}\n  {failure}")
        check()
    report = "\n\n".join(f"{op}: {title}\n{detail}" for (op, title), detail in sorted(found.items()))
    assert not found, (f"{len(found)} problem(s) in {time.monotonic() - started:.0f} s:"
                       f"\n\n{report}")
