"""What the server's deploy and teardown jobs do: bootstrap or remove a worker on a host."""
import re
import threading
from urllib.parse import urlsplit

from scitq.errors import BadRequest
from scitq.server.sshkey import ensure_keypair

ENGINES = ("pyinfra", "ansible")
URL_CHARACTERS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@%+=-]{1,512}")
# The name a deployed worker registers with: it goes into the host's settings file and the
# engines' variables, so plain characters only (a worker may name itself more freely).
WORKER_NAME = re.compile(r"(?!\d+\Z)[A-Za-z0-9][A-Za-z0-9._+@:=-]{0,127}")


def check_reachable(url, who, hosts=()):
    """BadRequest, one line naming --public-url, unless `who` (hosts of a provider, or the
    `hosts` of a deploy) can reach this server at `url`: a URL at all, and not a loopback one
    (which reaches only hosts on loopback themselves)."""
    from scitq.server.tls import is_loopback
    if not url:
        raise BadRequest(f"{who} cannot reach this server: it has no URL they can use; start it "
                         "with --public-url URL (an address of this machine they reach)")
    host = urlsplit(url).hostname or ""
    if is_loopback(host) and not (hosts and all(is_loopback(h) for h in hosts)):
        raise BadRequest(f"{who} cannot reach this server at {url}, a loopback address; start it "
                         "with --public-url URL (an address of this machine they reach)")


def deploy_params(body, public_url, default_engine="pyinfra"):
    """The params of a deploy job, checked: what a later attempt needs to run alone."""
    server_url = body.get("server_url") or public_url
    check_reachable(server_url, "the hosts", body.get("hosts") or ())
    check_server_url(server_url)
    engine = body.get("engine") or default_engine
    if engine not in ENGINES:
        raise BadRequest(f"unknown deploy engine {engine!r}: one of {', '.join(ENGINES)}")
    # What the worker will register with, checked now rather than on the host at each attempt.
    from scitq.server.task_store import check_batch_name
    if body.get("batch") is not None:
        check_batch_name(body["batch"])
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not WORKER_NAME.fullmatch(name)):
        raise BadRequest(f"invalid worker name {str(name)[:80]!r}: 1-128 letters, digits and "
                         "._+@:=-, starting with a letter or digit, not digits alone")
    return {"engine": engine, "user": body.get("user") or "root", "port": body.get("port") or 22,
            "server_url": server_url.rstrip("/"), "concurrency": body.get("concurrency") or 1,
            "prefetch": body.get("prefetch"), "batch": body.get("batch"),
            "name": body.get("name")}


def check_server_url(url):
    """An http(s) URL with a host, of characters that mean nothing to a shell or to the
    worker's settings file: letters, digits and ._~:/?#[]@%+=- (no space, quote, $, ; ...)."""
    if not isinstance(url, str) or not URL_CHARACTERS.fullmatch(url):
        raise BadRequest(f"invalid server_url {str(url)[:80]!r}: up to 512 letters, digits "
                         "and ._~:/?#[]@%+=- (no space, quote, backslash, $, ;, & ...)")
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port                     # noqa: B018 - a bad port raises
    except ValueError:
        ok = False
    if not ok:
        raise BadRequest(f"invalid server_url {url[:80]!r}: an http:// or https:// URL of this server")


class Deployer:
    """Job handlers for `deploy` and `teardown`, with the wheelhouse built once, on need."""

    def __init__(self, data_dir, tokens=None):
        self.data_dir = data_dir
        self.tokens = tokens          # a tokens.DeployTokens (None: auth is off)
        self.ca_file = None           # the server's CA certificate, pinned on each host (None: none)
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
                                  batch=p.get("batch"),
                                  ca_pem=self.ca_file.read_text() if self.ca_file else None)
        token_id = None
        if self.tokens is not None:     # made now, never kept in the job's params or log
            token_id, settings.token = self.tokens.mint(settings.name)
        try:
            changed = bootstrap(self._target(job), settings, p["engine"], log)
        except BaseException:
            # A next attempt mints its own: this one must not stay live on a host left half-made.
            if token_id is not None:
                self.tokens.revoke(token_id)
            raise
        log(f"worker {settings.name} is up ({'changed' if changed else 'no change'})")

    def teardown(self, job, log):
        from scitq.deploy import teardown
        teardown(self._target(job), job["params"]["engine"], log)
        log(f"{job['target']}: worker removed")
