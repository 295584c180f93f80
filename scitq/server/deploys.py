"""What the server's deploy and teardown jobs do: bootstrap or remove a worker on a host."""
import threading

from scitq.errors import BadRequest
from scitq.server.sshkey import ensure_keypair

ENGINES = ("pyinfra", "ansible")


def deploy_params(body, public_url, default_engine="pyinfra"):
    """The params of a deploy job, checked: what a later attempt needs to run alone."""
    server_url = body.get("server_url") or public_url
    if not server_url:
        raise BadRequest("the hosts must reach this server: give server_url, or start the "
                         "server with --public-url")
    engine = body.get("engine") or default_engine
    if engine not in ENGINES:
        raise BadRequest(f"unknown deploy engine {engine!r}: one of {', '.join(ENGINES)}")
    return {"engine": engine, "user": body.get("user") or "root", "port": body.get("port") or 22,
            "server_url": server_url.rstrip("/"), "concurrency": body.get("concurrency") or 1,
            "prefetch": body.get("prefetch") or 0, "batch": body.get("batch"),
            "name": body.get("name")}


class Deployer:
    """Job handlers for `deploy` and `teardown`, with the wheelhouse built once, on need."""

    def __init__(self, data_dir, token_for=None):
        self.data_dir = data_dir
        self.token_for = token_for    # worker name -> a fresh worker token (None: auth is off)
        self.wheelhouse = data_dir / "wheelhouse"
        self._building = threading.Lock()

    def handlers(self):
        return {"deploy": self.deploy, "teardown": self.teardown}

    def ensure_wheelhouse(self, log):
        from scitq.deploy import wheelhouse
        with self._building:
            files = wheelhouse.build(self.wheelhouse)
        log(f"wheelhouse: {len(files)} wheel(s) in {self.wheelhouse}")

    def _target(self, job):
        from scitq.deploy import Target
        p = job["params"]
        key, _ = ensure_keypair(self.data_dir)
        return Target(job["target"], user=p["user"], port=p["port"], key=str(key))

    def deploy(self, job, log):
        from scitq.deploy import WorkerSettings, bootstrap
        p = job["params"]
        self.ensure_wheelhouse(log)
        settings = WorkerSettings(server_url=p["server_url"],
                                  wheelhouse_url=p["server_url"] + "/wheelhouse/",
                                  name=p.get("name") or job["target"],
                                  concurrency=p["concurrency"], prefetch=p["prefetch"],
                                  batch=p.get("batch"))
        if self.token_for is not None:     # made now, never kept in the job's params or log
            settings.token = self.token_for(settings.name)
        changed = bootstrap(self._target(job), settings, p["engine"], log)
        log(f"worker {settings.name} is up ({'changed' if changed else 'no change'})")

    def teardown(self, job, log):
        from scitq.deploy import teardown
        teardown(self._target(job), job["params"]["engine"], log)
        log(f"{job['target']}: worker removed")
