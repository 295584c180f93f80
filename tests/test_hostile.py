"""Hostile names wherever the deploy or provider layer ends up building a command.

Through the API (on both databases): hosts, SSH users, batch and worker names, server URLs,
flavor and region names, a task's container, container options and inputs. Each is
answered 400 (or a clean 404) with a JSON message, nothing is stored, and the file that an
injected command would create (a fresh /tmp/pwned-<random> per test) never appears.

Below the API: the deploy engines and the local provider refuse hostile targets and names
before anything runs, the settings they put on a host stay data when a shell reads them,
and their commands are argument lists (or quoted by shlex), never a string for a shell.
"""
import ast
import json
import os
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest

from scitq.errors import BadRequest, ScitqError
from scitq.server import create_app

API = "/api/v1"
ROOT = Path(__file__).resolve().parent.parent
SMALL_ANSWER = 2048

# {p} is the test's own /tmp/pwned-<random> path.
HOSTS = ["-oProxyCommand=touch {p}", "-oProxyCommand touch {p}", "h; touch {p}", "$(touch {p})",
         "`touch {p}`", "h|touch {p}", "h&&touch {p}", "a b", "h\n", "h\ntouch {p}", "h\r", "h\x00",
         "h\t", "../../etc", "h'", '"h"', "h/x", ""]
USERS = ["root; touch {p}", "-oProxyCommand=touch {p}", "$(touch {p})", "root\n", "ro ot", "root\x00",
         "`touch {p}`", "../root"]
NAMES = ["../x", "..", "a/../b", "a;b", "a;touch {p}", "a'b", 'a"b', "$(touch {p})", "`touch {p}`",
         "a\nb", "x\n", "a b", "-rf", "--help", "x\x00", "a|b", "a&b", "a>b", "a\\b", "2024"]
FLAVORS = ["local-2; touch {p}", "$(touch {p})", "`touch {p}`", "$(id)", "`id`", "--help", "-v",
           "../../etc", "a/b", "a\nb", "x\n", "a b", "x\x00", "-oProxyCommand=touch {p}", "x'", ""]
IMAGES = ["alpine; touch {p}", "$(touch {p})", "`touch {p}`", "--privileged", "-v/:/host",
          "alpine\n", "alpine\nx", "a b", "../../etc", "alpine|touch {p}", "alpine&&touch {p}",
          "alpine'", "x\x00", ""]
CONTAINER_OPTIONS = ["$(touch {p})", "; touch {p}", "--env A=1 && touch {p}", "-v /:/host `touch {p}`",
                     "'unterminated", "--entrypoint sh -c 'touch {p}'", "alpine", "-v /:/host | touch {p}"]
INPUTS = ["file:///etc/passwd|sh -c 'touch {p}'", "http://x/a|mv:../../etc", "file:///x|mv:/etc",
          "$(touch {p})", "`touch {p}`", "-oProxyCommand=touch {p}", "http://x/a\n|sh",
          "file:///x\x00", "javascript:touch({p})", "ftp://x/{p}"]
SERVER_URLS = ["http://x/$(touch {p})", "http://x/`touch {p}`", "http://x';touch {p};'", "http://x\n",
               "http://x y", "http://x/\\", "ftp://x", "file:///{p}", "-oProxyCommand=touch {p}",
               "http://", "http://x:99999", 'http://x"']

PROVIDERS_OF = {
    "static": {"hosts": [{"name": "lab1", "address": "192.0.2.10", "cpu": 8, "flavor": "big"}]},
}


def fill(values, path):
    return [v.replace("{p}", path) for v in values]


@pytest.fixture
def pwned():
    """A path no test creates: if it appears, a hostile name ran as a command."""
    path = f"/tmp/pwned-{uuid.uuid4().hex}"
    yield path
    found = os.path.exists(path)
    if found:
        os.unlink(path)
    assert not found, f"{path} was created: a hostile name ran as a command"


@pytest.fixture
def app(db_url, tmp_path):
    """The app with the static provider and the local one configured (the local one is never
    asked for anything a hostile request reaches: its names are refused first)."""
    providers = dict(PROVIDERS_OF, local={"run_dir": str(tmp_path / "local-run"),
                                          "cache_dir": str(tmp_path / "local-cache")})
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "PROVIDERS": providers,
                      "PUBLIC_URL": "https://scitq.example:9"})
    yield app
    app.extensions["scitq"].db.dispose()


def refused(r, *codes):
    """A clean refusal: one of the codes (400 by default), a small JSON {"error": "..."}."""
    codes = codes or (400,)
    assert r.status_code in codes, f"{r.status_code} {r.get_data()[:300]!r}"
    assert r.is_json and isinstance(r.get_json().get("error"), str) and r.get_json()["error"]
    assert len(r.get_data()) < SMALL_ANSWER
    return r.get_json()["error"]


def nothing_stored(client, tmp_path):
    for path in ("/batches", "/workers", "/recruiters", "/providers/static/instances"):
        assert client.get(API + path).get_json() == [], path
    for path in ("/jobs", "/tasks", "/instances"):
        assert client.get(API + path).get_json()["items"] == [], path
    assert not (tmp_path / "local-run").exists()        # the local provider never ran


def post(client, path, body):
    return client.post(API + path, json=body)


# --- through the API ------------------------------------------------------------------

@pytest.mark.parametrize("index", range(len(HOSTS)))
def test_deploys_and_teardowns_refuse_hostile_hosts(client, tmp_path, pwned, index):
    host = fill(HOSTS, pwned)[index]
    for path in ("/jobs/deploy", "/jobs/teardown"):
        refused(post(client, path, {"hosts": [host]}))
        refused(post(client, path, {"hosts": ["good.example", host]}))   # all or none
    nothing_stored(client, tmp_path)


@pytest.mark.parametrize("index", range(len(USERS)))
def test_deploys_and_teardowns_refuse_hostile_users(client, tmp_path, pwned, index):
    user = fill(USERS, pwned)[index]
    for path in ("/jobs/deploy", "/jobs/teardown"):
        refused(post(client, path, {"hosts": ["h1"], "user": user}))
    nothing_stored(client, tmp_path)


def test_deploys_refuse_hostile_settings_for_the_worker(client, tmp_path, pwned):
    for name in fill(NAMES, pwned):
        refused(post(client, "/jobs/deploy", {"hosts": ["h1"], "batch": name}))
        refused(post(client, "/jobs/deploy", {"hosts": ["h1"], "name": name}))
    for url in fill(SERVER_URLS, pwned):
        refused(post(client, "/jobs/deploy", {"hosts": ["h1"], "server_url": url}))
    nothing_stored(client, tmp_path)
    # and the same settings, plain, make a job
    made = post(client, "/jobs/deploy", {"hosts": ["h1"], "batch": "b1", "name": "w-1",
                                         "server_url": "https://scitq.example:8443/prefix/"})
    assert made.status_code == 201 and made.get_json()[0]["params"]["name"] == "w-1"


def test_batch_names_are_plain_everywhere(client, tmp_path, pwned):
    for name in fill(NAMES, pwned):
        refused(post(client, "/batches", {"name": name}))
        refused(post(client, "/tasks", {"command": "true", "batch": name}))
        refused(post(client, "/tasks/bulk", {"batch": name, "tasks": [{"command": "true"}]}))
        refused(post(client, "/tasks/bulk", {"tasks": [{"command": "true"},
                                                       {"command": "true", "batch": name}]}))
        refused(post(client, "/workers", {"name": "w1", "batch": name}))
        refused(post(client, "/recruiters", {"batch": name, "provider": "static", "flavor": "big",
                                             "max_workers": 1, "tasks_per_worker": 1,
                                             "concurrency": 1}))
        refused(post(client, "/jobs/deploy", {"hosts": ["h1"], "batch": name}))
    nothing_stored(client, tmp_path)


def test_worker_names_are_refused_with_what_no_name_may_hold(client, tmp_path, pwned):
    for name in ["a b", "a/b", "../x", "x\n", "a\x00", "a\tb", "a\x1bb", "123", ""]:
        refused(post(client, "/workers", {"name": name}))
    nothing_stored(client, tmp_path)


@pytest.mark.parametrize("provider", ["static", "local"])
def test_hosts_are_not_asked_for_with_hostile_flavors_or_regions(client, tmp_path, pwned, provider):
    good_flavor, good_region = ("big", "static") if provider == "static" else ("local-2", "local")
    for bad in fill(FLAVORS, pwned):
        refused(post(client, f"/providers/{provider}/instances", {"flavor": bad, "region": good_region}))
        refused(post(client, f"/providers/{provider}/instances", {"flavor": good_flavor, "region": bad}))
        spec = {"batch": "b1", "provider": provider, "max_workers": 1, "tasks_per_worker": 1,
                "concurrency": 1}
        refused(post(client, "/recruiters", dict(spec, flavor=bad)))
        refused(post(client, "/recruiters", dict(spec, min_cpu=1, regions=[good_region, bad])))
    nothing_stored(client, tmp_path)
    static_state = tmp_path / "providers" / "static" / "static-hosts.json"
    assert not static_state.exists() or json.loads(static_state.read_text() or "{}") == {}


def test_tasks_refuse_hostile_containers_options_and_inputs(client, tmp_path, pwned):
    def bad_tasks():
        for image in fill(IMAGES, pwned):
            yield {"command": "true", "container": image}
        for options in fill(CONTAINER_OPTIONS, pwned):
            yield {"command": "true", "container": "alpine", "container_options": options}
        for uri in fill(INPUTS, pwned):
            yield {"command": "true", "inputs": [uri]}
            yield {"command": "true", "resources": [uri]}
        yield {"command": "true", "output": f"file:///out/|sh -c 'touch {pwned}'"}

    for task in bad_tasks():
        refused(post(client, "/tasks", task))
        refused(post(client, "/tasks/bulk", {"tasks": [{"command": "true"}, task]}))
    nothing_stored(client, tmp_path)

    kept = post(client, "/tasks", {"command": "true", "container": "registry.example:5000/team/tool:1.2",
                                   "container_options": "-e A=1 -v /data:/data:ro"})
    assert kept.status_code == 201, kept.get_data()
    before = client.get(f"{API}/tasks/{kept.get_json()['id']}").get_json()
    for task in bad_tasks():
        task.pop("command")
        refused(client.put(f"{API}/tasks/{before['id']}", json=task))
    assert client.get(f"{API}/tasks/{before['id']}").get_json() == before


def test_odd_references_answer_a_clean_not_found(client, pwned):
    """Nothing in a path or a filter reaches a database or a command as anything but data:
    a NUL (which PostgreSQL refuses to even compare), digits that int() cannot read."""
    for path in ("/batches/a%00b", "/workers/a%00b", "/batches/%C2%B2", "/workers/%C2%B3%C2%B9",
                 "/batches/..%2F..%2Fetc", "/providers/static/instances/a%00b",
                 f"/batches/$(touch%20{pwned})", "/tokens/%C2%B2"):
        refused(client.get(API + path) if "tokens" not in path else client.delete(API + path), 404)
    for path, query in (("/tasks", {"batch": "a\x00"}), ("/recruiters", {"batch": "a\x00"}),
                        ("/instances", {"batch": "a\x00"})):
        refused(client.get(API + path, query_string=query), 404)
    for path, query in (("/tasks", {"name": "a\x00"}), ("/instances", {"provider": "a\x00"}),
                        ("/providers/flavors", {"region": "a\x00"}),
                        ("/providers/flavors", {"min_cpu": str(2 ** 70)})):
        refused(client.get(API + path, query_string=query))



def test_a_lone_surrogate_is_refused_and_stores_nothing(client):
    """JSON can escape half a UTF-16 pair (\\ud800): Python keeps it, no database stores it.
    Refused in one line wherever a body goes; a whole pair is one character, and is stored."""
    lone = '{"command": "echo \\ud800", "name": "x"}'
    for path, body in (("/tasks", lone), ("/tasks/bulk", '{"tasks": [' + lone + ']}'),
                       ("/tasks/bulk", '{"tasks": [{"command": "true"}], "batch": "b\\udfff"}')):
        refused(client.post(API + path, data=body, content_type="application/json"))
    assert client.get(API + "/tasks").get_json()["items"] == []
    stored = client.post(API + "/tasks", data='{"command": "echo \\ud83e\\uddec"}',
                         content_type="application/json")
    assert stored.status_code == 201, stored.get_json()
    assert client.get(API + f"/tasks/{stored.get_json()['id']}").get_json()["command"] == "echo \U0001f9ec"

# --- the deploy layer ---------------------------------------------------------------

def _settings(**changes):
    from scitq.deploy import WorkerSettings
    return WorkerSettings(**{"server_url": "http://127.0.0.1:9",
                             "wheelhouse_url": "http://127.0.0.1:9/wheelhouse/", "name": "w", **changes})


@pytest.mark.parametrize("engine", ["pyinfra", "ansible"])
def test_deploy_engines_refuse_hostile_targets_before_any_connection(pwned, engine):
    from scitq import deploy
    from scitq.deploy import Target
    module = deploy.engine(engine)
    lines = []
    for host in filter(None, fill(HOSTS, pwned)):
        for call in (lambda t: deploy.bootstrap(t, _settings(), engine, lines.append),
                     lambda t: deploy.teardown(t, engine, lines.append),
                     lambda t: module.teardown(t, lines.append)):
            with pytest.raises(BadRequest, match="invalid host"):
                call(Target(host))
    for user in filter(None, fill(USERS, pwned)):
        with pytest.raises(BadRequest, match="invalid SSH user"):
            module.teardown(Target("127.0.0.1", user=user), lines.append)
    with pytest.raises(BadRequest, match="invalid SSH port"):
        module.teardown(Target("127.0.0.1", port="22; touch x"), lines.append)
    assert lines == []          # nothing ran, not even a log line


def test_the_worker_settings_stay_data_when_a_shell_reads_them(tmp_path, pwned):
    """worker.env is read by sh (`set -a; . worker.env`) and by systemd: hostile values are
    quoted, or refused when they could break the quoting."""
    from scitq.deploy import DeployError
    from scitq.deploy.pyinfra_engine import worker_env
    hostile = {"name": f"$(touch {pwned})", "batch": f"`touch {pwned}`;touch {pwned}",
               "server_url": f"http://x/$(touch {pwned})&&touch {pwned}|x",
               "extra_env": {"SCITQ_X": f"a b; touch {pwned} > /dev/null"}}
    env = tmp_path / "worker.env"
    env.write_text(worker_env(_settings(**hostile)))
    shown = subprocess.run(["sh", "-c", 'set -a; . "$1"; set +a; printf "%s\\n" "$SCITQ_NAME" '
                            '"$SCITQ_BATCH" "$SCITQ_SERVER" "$SCITQ_X"', "sh", str(env)],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert shown.splitlines() == [hostile["name"], hostile["batch"], hostile["server_url"],
                                  hostile["extra_env"]["SCITQ_X"]]
    for bad in ("a'b", "a\\b", "a\nb", "a\rb", "a\x00b"):
        with pytest.raises(DeployError):
            worker_env(_settings(name=bad))
        with pytest.raises(DeployError):
            worker_env(_settings(extra_env={"SCITQ_X": bad}))
    with pytest.raises(DeployError):
        worker_env(_settings(extra_env={"X; touch /tmp/y": "1"}))


def test_pip_arguments_are_quoted_for_the_remote_shell(pwned):
    """The wheelhouse URL (from the deploy's server_url) goes into a pip command line that a
    shell runs on the host (pyinfra) or that Ansible splits: shlex-quoted, it stays one word."""
    from scitq.deploy.ansible_engine import _unsafe_yaml, extravars
    from scitq.deploy.pyinfra_engine import pip_args
    url = f"http://h:1/$(touch {pwned});touch {pwned} `touch {pwned}` '\"|&>"
    words = subprocess.run(["sh", "-c", f"printf '%s\\n' {pip_args(url)}"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert shlex.split(pip_args(url)) == words
    assert words[words.index("--find-links") + 1] == url
    # Ansible: every setting goes in as !unsafe (never templated), the pip line as one string
    # that its command module splits like the shell above.
    variables = extravars(_settings(name="{{ lookup('pipe', 'touch " + pwned + "') }}",
                                    wheelhouse_url=url))
    assert variables["scitq_pip_args"] == pip_args(url)
    for key, value in variables.items():
        if isinstance(value, str) and value:      # "" holds no template and goes plain
            assert _unsafe_yaml(value).startswith("!unsafe "), key


def test_the_local_provider_refuses_hostile_names_before_anything_runs(tmp_path, pwned, monkeypatch):
    from scitq.providers import InstanceSpec
    from scitq.providers.local import LocalProvider
    provider = LocalProvider({"run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")})

    def must_not_run(*args, **kwargs):
        raise AssertionError("a hostile spec got past the checks")
    for name in ("check", "image", "_boot", "_state"):
        monkeypatch.setattr(provider, name, must_not_run)
    specs = [dict(name=name) for name in fill(["a;touch {p}", "-oProxyCommand=touch {p}", "a\n", "$(id)",
                                               "../x", "A", "a b", "x" * 64, "-a", "a-", "", "a\x00"], pwned)]
    specs += [dict(flavor=flavor) for flavor in fill(FLAVORS, pwned) + ["local-2\n"]]
    specs += [dict(region=region) for region in fill(FLAVORS, pwned) + ["local\n"]]
    for changes in specs:
        spec = InstanceSpec(**{"name": "scitq-ok-1", "flavor": "local-2", "region": "local", **changes})
        with pytest.raises(BadRequest):
            provider.create(spec)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


# --- how commands are built -------------------------------------------------------------

COMMAND_BUILDERS = ["scitq/deploy/__init__.py", "scitq/deploy/pyinfra_engine.py",
                    "scitq/deploy/ansible_engine.py", "scitq/deploy/wheelhouse.py",
                    "scitq/providers/local.py", "scitq/providers/netns.py", "scitq/server/sshkey.py"]
RUNNERS = {"run", "Popen", "call", "check_call", "check_output", "create_subprocess_exec"}


def _module_constants(tree):
    """Module-level names bound to a string built from constants only (and the upper-case
    names it imports: the layout's constants)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names if (a.asname or a.name).isupper()}
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name) and _is_constant(node.value, names)):
            names.add(node.targets[0].id)
    return names


def _assigned(func):
    """{name: [value nodes]} of the plain assignments in a function."""
    bound = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    bound.setdefault(target.id, []).append(node.value)
    return bound


def _function_constants(func, names):
    return names | {k for k, values in _assigned(func).items()
                    if all(_is_constant(v, names) for v in values)}


def _is_constant(node, names):
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.JoinedStr):
        return all(_is_constant(v.value if isinstance(v, ast.FormattedValue) else v, names)
                   for v in node.values)
    if isinstance(node, ast.BinOp):
        return _is_constant(node.left, names) and _is_constant(node.right, names)
    if isinstance(node, ast.IfExp):
        return _is_constant(node.body, names) and _is_constant(node.orelse, names)
    return False


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", COMMAND_BUILDERS)
def test_commands_are_argument_lists_never_strings_for_a_shell(path):
    """Every process the deploy and provider layers start gets an argv list (or a name bound
    to one), without shell=True; a `sh -c` script is a constant that takes its data as "$@";
    os.system and os.popen are not used."""
    tree = ast.parse((ROOT / path).read_text(), path)
    constants = _module_constants(tree)
    for func in _functions(tree):
        bound = _assigned(func)
        local_constants = _function_constants(func, constants)
        for call in [n for n in ast.walk(func) if isinstance(n, ast.Call)]:
            name = getattr(call.func, "attr", getattr(call.func, "id", None))
            owner = getattr(getattr(call.func, "value", None), "id", None)
            assert not (owner == "os" and name in ("system", "popen")), f"{path}:{call.lineno}"
            assert name != "create_subprocess_shell", f"{path}:{call.lineno}"
            if owner not in ("subprocess", "asyncio") or name not in RUNNERS:
                continue
            assert not any(k.arg == "shell" for k in call.keywords), f"{path}:{call.lineno}: shell="
            argv = call.args[0]
            if isinstance(argv, ast.Name):
                values = bound.get(argv.id, [])
                assert values and all(isinstance(v, (ast.List, ast.BinOp)) for v in values), \
                    f"{path}:{call.lineno}: {argv.id} is not a list"
                argv = values[0]
                while isinstance(argv, ast.BinOp):
                    argv = argv.left
            assert isinstance(argv, ast.List), f"{path}:{call.lineno}: not an argument list"
            words = argv.elts
            for i, word in enumerate(words[:-1]):
                if isinstance(word, ast.Constant) and word.value == "-c":
                    script = words[i + 1]
                    assert _is_constant(script, local_constants), \
                        f"{path}:{call.lineno}: a shell script built from data"


def test_the_remote_commands_of_the_pyinfra_engine_are_constants():
    """What pyinfra runs through the host's shell in scitq's own operations and facts is fixed
    text (paths and timeouts of the layout); data goes through files.put or pip_args."""
    path = "scitq/deploy/pyinfra_engine.py"
    tree = ast.parse((ROOT / path).read_text(), path)
    constants = _module_constants(tree)
    checked = 0
    for func in _functions(tree):
        names = _function_constants(func, constants)
        operation = any(getattr(d, "id", None) == "operation"
                        or getattr(getattr(d, "func", None), "id", None) == "operation"
                        for d in func.decorator_list)
        for node in ast.walk(func):
            commands = []
            if operation and isinstance(node, ast.Yield):
                commands.append(node.value)                 # what an operation runs
            if func.name == "command" and isinstance(node, ast.Return):
                commands.append(node.value)                 # what a fact runs
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "StringCommand":
                commands += node.args
            for command in commands:
                checked += 1
                assert _is_constant(command, names), f"{path}:{command.lineno}: a command built from data"
    assert checked >= 5
