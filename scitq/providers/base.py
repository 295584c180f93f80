"""What every provider speaks: flavors, instance specs, instances, and the interface.

One module per cloud implements `Provider` (see ovh.py, azure.py, local.py, static.py);
their SDKs are imported inside those modules, lazily, so a user without the Azure SDK
can still use OVH.
"""
import contextvars
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum

TAG = "scitq"            # every instance scitq creates carries this tag (value: the instance name)
MAX_RETRY_AFTER = 300    # seconds of a 429's Retry-After a job waits out (config `max_retry_after`)

_progress = contextvars.ContextVar("scitq_provider_progress", default=None)


@contextmanager
def reporting(log_line):
    """Provider calls made inside say what they wait for through log_line (a job's progress)."""
    token = _progress.set(log_line)
    try:
        yield
    finally:
        _progress.reset(token)


def say(text):
    """A progress line for the job that made this provider call, else the log."""
    line = _progress.get()
    if line is None:
        logging.getLogger("scitq.providers").info("%s", text)
    else:
        line(text)


class InstanceStatus(str, Enum):
    CREATING = "creating"    # asked for, not yet reachable
    RUNNING = "running"      # booted, has its address
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"        # the cloud gave up on it (ERROR state, failed provisioning)


@dataclass(frozen=True)
class Flavor:
    provider: str
    region: str
    name: str
    cpu: int                          # vCPUs
    ram: float                        # GiB
    disk: float                       # GiB of local/OS disk
    gpu: int = 0                      # number of GPUs
    gpu_model: str | None = None
    hourly_cost: float | None = None  # per hour, in the account's currency (OVH: EUR for the FR
                                      # subsidiary; Azure: the configured one); None: unknown
    spot: bool = False                # a spot/preemptible price

    def to_dict(self):
        return asdict(self)


@dataclass
class InstanceSpec:
    name: str                         # unique among scitq's instances; also the host name
    flavor: str
    region: str
    image: str | None = None          # provider default when None
    ssh_public_key: str | None = None # installed for the provider's default user
    user_data: str | None = None      # cloud-init
    tags: dict = field(default_factory=dict)
    spot: bool = False
    max_price: float | None = None    # spot only: the highest hourly price to pay (None: on-demand cap)


@dataclass
class Instance:
    provider: str
    id: str                           # opaque, the provider's own: OVH "region/uuid", Azure the VM
                                      # name, local and static the host name
    name: str
    region: str
    flavor: str
    status: InstanceStatus
    ip: str | None = None             # the address scitq reaches it at (SSH)
    private_ip: str | None = None
    user: str | None = None           # SSH user
    tags: dict = field(default_factory=dict)
    created_at: str | None = None     # ISO 8601 when known

    def to_dict(self):
        d = asdict(self)
        d["status"] = self.status.value
        return d


@dataclass(frozen=True)
class Quota:
    region: str
    resource: str                     # "cores", "instances", "ram_gib", ...
    used: float
    limit: float | None               # None: unlimited

    def to_dict(self):
        return asdict(self)


class Provider:
    """One cloud account (or one machine). Subclasses implement every method below;
    `delete` is idempotent: deleting what is gone already is not an error."""

    name = "?"
    # Its create() rents a host and its delete() gives it back (False: a lab's own machines,
    # lent and released, never deleted): whether recruitment may sweep its evictions and orphans.
    rents_hosts = True

    def __init__(self, config=None):
        self.config = dict(config or {})

    def check(self):
        """Raise AuthError / ProviderUnavailable when this provider cannot work here."""

    def regions(self):
        raise NotImplementedError(f"{self.name} does not list regions")

    def flavors(self, region=None):
        raise NotImplementedError(f"{self.name} does not list flavors")

    def quotas(self, region):
        raise NotImplementedError(f"{self.name} does not report quotas")

    def create(self, spec):
        raise NotImplementedError(f"{self.name} cannot create instances")

    def get(self, instance_id):
        raise NotImplementedError(f"{self.name} cannot look instances up")

    def list(self, tags=None):
        """Instances carrying every given tag (default: all scitq-tagged ones). Tag values are
        strings; a value of None means "the key is present" (see carries())."""
        raise NotImplementedError(f"{self.name} cannot list instances")

    def delete(self, instance_id):
        raise NotImplementedError(f"{self.name} cannot delete instances")

    def max_retry_after(self):
        """The longest Retry-After (seconds) a job waits out before failing over."""
        return float(self.config.get("max_retry_after", MAX_RETRY_AFTER))

    def wait_throttled(self, status, wait, request, sleep=time.sleep):
        """Wait out a throttling answer's Retry-After of `wait` seconds, saying in the job's
        progress until when; beyond `max_retry_after`, Throttled, so that recruitment fails over
        rather than a job sleeping unseen for as long as the cloud says."""
        from scitq.errors import Throttled
        bound = self.max_retry_after()
        if wait > bound:
            raise Throttled(f"{self.name}: throttled (HTTP {status}, Retry-After {wait:g} s, beyond "
                            f"scitq's bound of {bound:g} s): {request}")
        until = datetime.now(timezone.utc) + timedelta(seconds=wait)
        say(f"{self.name}: throttled (HTTP {status}): waiting {wait:g} s, until {until:%H:%M:%S} UTC")
        sleep(wait)


def carries(tags, wanted=None):
    """Whether an instance's tags hold every wanted tag (a None value: the key is present;
    values compared as the strings clouds keep); no wanted tags: scitq's own instances."""
    return all(k in tags and (v is None or str(tags[k]) == str(v))
               for k, v in (wanted or {TAG: None}).items())


def check_max_price(value):
    """A spot max_price as Azure takes it: -1 (pay up to the on-demand price) or a price above 0,
    in US dollars per hour; None (no cap given) passes."""
    import math

    from scitq.errors import BadRequest
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not (value == -1 or value > 0):
        raise BadRequest(f"max_price {value!r}: a spot price is -1 (up to the on-demand price) or "
                         "US dollars per hour above 0")
    return value


def require(module, extra):
    """Import a cloud SDK module, or say which extra installs it."""
    import importlib

    from scitq.errors import ProviderUnavailable
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ProviderUnavailable(f"{module} is not installed: pip install 'scitq[{extra}]' ({exc})") from exc
