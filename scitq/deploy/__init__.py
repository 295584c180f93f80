"""Deploy: turn a bare SSH host into a running scitq worker, and take it away again.

Two engines do the same thing behind one small interface: pyinfra (default,
scitq/deploy/pyinfra_engine.py) and Ansible through ansible-runner
(scitq/deploy/ansible_engine.py, playbooks/). Hosts need no package index: the worker's
packages come from the server's wheelhouse (scitq/deploy/wheelhouse.py).

    changed = bootstrap(Target("10.0.0.5", user="root", key="/path/id"), settings, log=print)
    teardown(target, log=print)

Both are idempotent: a second bootstrap of a host changes nothing and says so.
"""
import importlib
import re
from dataclasses import dataclass, field

from scitq.errors import BadRequest, ScitqError

ENGINES = {"pyinfra": "scitq.deploy.pyinfra_engine", "ansible": "scitq.deploy.ansible_engine"}
REMOTE_ROOT = "/opt/scitq"                 # venv and config on the host
SERVICE = "scitq-worker"                   # systemd unit / supervised process name
# What a target may be, matched whole (fullmatch: a $ would let a final line break through),
# whoever asks: a host name or an address, never an option to ssh (no leading -), and a plain
# user name.
HOST = re.compile(r"(?!-)[A-Za-z0-9._:-]{1,253}")
USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class DeployError(ScitqError):
    """A deploy or teardown failed; the message says where, the job log has the rest."""

    http_status = 502


@dataclass
class Target:
    host: str                              # address or name scitq reaches over SSH
    user: str = "root"
    port: int = 22
    key: str | None = None                 # private key file (default: the server's own key)
    sudo: bool | None = None               # None: sudo when user is not root


@dataclass
class WorkerSettings:
    server_url: str                        # how the worker reaches the server (from the host!)
    wheelhouse_url: str                    # pip --find-links URL served by the server
    name: str                              # worker name
    concurrency: int = 1
    prefetch: int | None = None     # None: the worker sizes it (auto)
    batch: str | None = None
    token: str | None = None
    extra_env: dict = field(default_factory=dict)
    ca_pem: str | None = None              # the server's CA certificate, pinned on the host (None: system store)


def engine(name):
    try:
        return importlib.import_module(ENGINES[name])
    except KeyError:
        raise BadRequest(f"unknown deploy engine {name!r}: one of {', '.join(ENGINES)}") from None


def check_host(host, user):
    """BadRequest unless host and user are plain: the check of a deploy's target, the API's
    (on a job's creation) and the engines' alike."""
    if not isinstance(host, str) or not HOST.fullmatch(host):
        raise BadRequest(f"invalid host {str(host)[:80]!r}: a host name or an IP address")
    if not isinstance(user, str) or not USER.fullmatch(user):
        raise BadRequest(f"invalid SSH user {str(user)[:40]!r}")


def check_target(target):
    """BadRequest unless the target is a plain host, user and port: what the engines hand to
    ssh and paramiko is then never read as an option."""
    check_host(target.host, target.user)
    if not isinstance(target.port, int) or isinstance(target.port, bool) or not 0 < target.port < 65536:
        raise BadRequest(f"invalid SSH port {target.port!r}")


def bootstrap(target, settings, engine_name="pyinfra", log=print):
    """Install and start the worker; returns True when something changed. Raises DeployError."""
    check_target(target)
    return engine(engine_name).bootstrap(target, settings, log)


def teardown(target, engine_name="pyinfra", log=print):
    """Stop the worker and remove everything bootstrap put on the host. Raises DeployError."""
    check_target(target)
    return engine(engine_name).teardown(target, log)
