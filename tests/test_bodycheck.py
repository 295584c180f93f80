"""The compiled body checks (fastjsonschema) agree with jsonschema (what validate=True runs)
on the models of the workers' hot endpoints, for valid bodies and for thousands of broken
ones, and name the wrong fields as validate=True does."""
import copy
import random

import pytest
from jsonschema import Draft4Validator

from scitq.errors import BadRequest
from scitq.server.api import tasks, workers
from scitq.server.api.bodycheck import compile_model

MODELS = {"reports": workers.reports_in, "poll": workers.poll_in, "bulk": tasks.bulk_in}

VALID = {
    "bulk": [
        {"tasks": [{"command": "true"}]},
        {"batch": "b", "tasks": [
            {"command": "x", "name": "n", "shell": False, "retries": 2, "retry_delay": 0.5,
             "retry_backoff": 2, "timeout": 3, "staging_timeout": 1, "depends_on": [1, "a"],
             "ref": "b", "container": "img", "container_options": "-e A=1",
             "inputs": ["s3://x/y"], "resources": ["file:///r"], "output": "s3://o/",
             "use_cache": True, "batch": "c"},
            {"command": "y", "ref": "a"}]},
    ],
    "reports": [
        {"reports": []},
        {},
        {"reports": [{"execution_id": 1, "status": "running", "pid": 12}], "queued": 3},
        {"reports": [{"execution_id": 2, "status": "succeeded", "return_code": 0,
                      "stdout": {"offset": 0, "data": "aGk="}, "reason": "cached", "cached_from": 1},
                     {"execution_id": 3, "status": "signaled", "signal": "pause", "seq": 2}],
         "status": "draining", "more": True},
    ],
    "poll": [
        {},
        {"known": [1, 2], "wait": 0.5, "concurrency": 4, "prefetch": 8, "status": "running",
         "stats": {"load": 0.5, "memory": 12, "disk": 40.5}, "signaled": [[1, 2]]},
    ],
}

ODD = [None, True, False, 0, -1, 1.0, 2.5, 10 ** 20, "", "x", "running", "y" * 5000, [], [1],
       [[1, "a"]], {}, {"offset": 0}, {"offset": -1, "data": 5}, {"offset": 1, "data": "AA=="}]


def jsonschema_errors(model, body):
    schemas = {name: m.__schema__ for ns in (workers.ns, tasks.ns) for name, m in ns.models.items()}
    validator = Draft4Validator(dict(model.__schema__, definitions=schemas))
    return {".".join(str(p) for p in e.path) for e in validator.iter_errors(body)}


def fast_errors(check, body):
    try:
        check(body)
    except BadRequest as err:
        assert err.message == "Input payload validation failed"
        return set(err.detail)
    return set()


def mutations(body, rng):
    """The body with one value somewhere replaced by an odd one, or one key dropped."""
    out = copy.deepcopy(body)
    holders = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                holders.append((node, key))
                walk(value)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                holders.append((node, i))
                walk(value)
    walk(out)
    if not holders or rng.random() < 0.1:
        return rng.choice(ODD)
    node, key = rng.choice(holders)
    if isinstance(node, dict) and rng.random() < 0.2:
        del node[key]
    else:
        node[key] = rng.choice(ODD)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_valid_bodies_pass(name):
    check = compile_model(MODELS[name])
    for body in VALID[name]:
        assert jsonschema_errors(MODELS[name], body) == set()
        assert check(body) is body


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_verdict_and_same_fields_as_jsonschema(name):
    rng = random.Random(7)
    model, check = MODELS[name], compile_model(MODELS[name])
    refused = 0
    for _ in range(3000):
        body = mutations(rng.choice(VALID[name]), rng)
        expected = jsonschema_errors(model, body)
        assert fast_errors(check, body) == expected, body
        refused += bool(expected)
    assert refused > 1000      # the generator does break bodies


def test_error_names_the_field():
    check = compile_model(workers.reports_in)
    with pytest.raises(BadRequest) as err:
        check({"reports": [{"execution_id": 1, "status": "done"}]})
    assert list(err.value.detail) == ["reports.0.status"]
    assert err.value.message == "Input payload validation failed"
    assert err.value.detail["reports.0.status"].startswith("must be one of ['running'")


def test_every_wrong_field_is_named():
    check = compile_model(workers.reports_in)
    with pytest.raises(BadRequest) as err:
        check({"queued": -1, "reports": [{"status": "running"}, {"execution_id": "x", "status": "failed"}]})
    assert set(err.value.detail) == {"queued", "reports.0", "reports.1.execution_id"}


def test_defaults_are_not_written_into_the_body():
    body = {}
    assert compile_model(workers.poll_in)(body) == {} and body == {}
