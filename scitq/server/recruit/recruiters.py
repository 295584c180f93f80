"""Recruiters as the user states them: validating, storing, listing and deleting them.

Pure database logic (no Flask). What their hosts cost is the ledger's (ledger.py); the
reconciler that actually rents and releases hosts reads these rows (reconciler.py).
"""
from sqlalchemy import func, select

from scitq.errors import BadRequest
from scitq.server import task_store
from scitq.server.db import record
from scitq.server.models import MAX_INT, Instance, Recruiter
from scitq.server.providers import check_name
from scitq.server.recruit.ledger import cost_of, no_cost
from scitq.status import LIVE_HOSTS

FIELDS = ("batch", "provider", "regions", "flavor", "min_cpu", "min_ram", "min_disk", "gpu",
          "max_workers", "tasks_per_worker", "concurrency", "prefetch", "idle_timeout",
          "deploy_timeout", "max_hourly_cost", "budget", "spot", "rank")
MINIMUMS = ("min_cpu", "min_ram", "min_disk")
MAX_WORKERS = 10_000
MAX_TASKS_PER_WORKER = 10 ** 9
MAX_CONCURRENCY = 1024
MAX_PREFETCH = 1024
MAX_IDLE_TIMEOUT = 30 * 86400.0      # seconds
MAX_DEPLOY_TIMEOUT = 86400           # seconds: no deploy takes a day
MAX_GIB = 10.0 ** 7                  # RAM or disk asked of one host
MAX_MONEY = 10.0 ** 12               # hourly cost or budget, in the providers' currency
MAX_REGIONS = 1000

_REQUIRED = object()


def _int(spec, key, low, high, default=_REQUIRED):
    value = spec.get(key)
    if value is None:
        if default is _REQUIRED:
            raise BadRequest(f"{key} is required: an integer from {low} to {high}")
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{key} must be an integer from {low} to {high}")
    return value


def _positive(spec, key, high):
    """A number above 0, or None."""
    value = spec.get(key)
    if value is None:
        return None
    # NaN and infinities fail the comparison, so they are refused too.
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= high:
        raise BadRequest(f"{key} must be a number above 0 and at most {high:g}, or null")
    return float(value)


def _bool(spec, key):
    value = spec.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false")
    return value


def _name(spec, key, limit):
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or "\x00" in value:
        raise BadRequest(f"{key} must be a non-empty string of at most {limit} characters")
    return value


def check_recruiter(spec, providers):
    """Validate a recruiter submission; returns its clean fields (the batch as a name).

    `providers` is the server's scitq.server.providers.Providers: the provider must be
    configured on this server. Bad input raises BadRequest with one sentence."""
    if not isinstance(spec, dict):
        raise BadRequest("a recruiter must be an object")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown recruiter field(s) {', '.join(map(str, unknown))[:200]}: "
                         f"expected some of {', '.join(FIELDS)}")
    if spec.get("batch") is None:
        raise BadRequest("batch is required: the name of the batch the recruiter serves")
    batch = task_store.check_batch_name(spec["batch"])
    provider = _name(spec, "provider", 32)
    if provider is None:
        raise BadRequest("provider is required: the name of a provider configured on this server")
    providers.get(provider)          # BadRequest when unknown or not configured here

    regions = _regions(spec)
    flavor, minimums, gpu = _shape(spec)

    return {
        "batch": batch, "provider": provider, "regions": regions, "flavor": flavor, **minimums,
        "gpu": gpu, "spot": _bool(spec, "spot"),
        "max_workers": _int(spec, "max_workers", 1, MAX_WORKERS),
        "tasks_per_worker": _int(spec, "tasks_per_worker", 1, MAX_TASKS_PER_WORKER),
        "concurrency": _int(spec, "concurrency", 1, MAX_CONCURRENCY),
        "prefetch": _int(spec, "prefetch", 0, MAX_PREFETCH, default=None),   # None: auto
        "idle_timeout": _idle_timeout(spec),
        # None: the server's deploy timeout.
        "deploy_timeout": _int(spec, "deploy_timeout", 1, MAX_DEPLOY_TIMEOUT, default=None),
        "max_hourly_cost": _positive(spec, "max_hourly_cost", MAX_MONEY),
        "budget": _positive(spec, "budget", MAX_MONEY),
        "rank": _int(spec, "rank", -MAX_INT, MAX_INT, default=0),
    }


def _regions(spec):
    """The regions asked for, without repeats, in the given order; None for every region."""
    regions = spec.get("regions")
    if regions is not None:
        if (not isinstance(regions, list) or not regions or len(regions) > MAX_REGIONS
                or not all(isinstance(r, str) and r.strip() and len(r) <= 64 for r in regions)):
            raise BadRequest("regions must be a non-empty list of region names (at most 64 "
                             "characters each), or null for every region of the provider")
        for region in regions:
            check_name("region", region, 64)
        regions = list(dict.fromkeys(regions))        # without repeats, in the given order
    return regions


def _shape(spec):
    """(flavor, minimums, gpu): a named flavor or minimums, one of the two."""
    flavor = _name(spec, "flavor", 128)
    if flavor is not None:
        check_name("flavor", flavor)
    minimums = {"min_cpu": _int(spec, "min_cpu", 1, MAX_INT, default=None),
                "min_ram": _positive(spec, "min_ram", MAX_GIB),
                "min_disk": _positive(spec, "min_disk", MAX_GIB)}
    gpu = _bool(spec, "gpu")
    given = any(v is not None for v in minimums.values())
    if flavor is not None and given:
        raise BadRequest("give either a flavor or minimums (min_cpu, min_ram, min_disk), not both")
    if flavor is None and not given:
        raise BadRequest("give --flavor or at least one of --min-cpu/--min-ram/--min-disk")
    if flavor is not None and gpu:
        # A named flavor has its GPU or not: a gpu flag beside it would be silently ignored.
        raise BadRequest("gpu selects among minimums; it cannot go with a named flavor")
    return flavor, minimums, gpu


def _idle_timeout(spec):
    value = spec.get("idle_timeout")
    if value is None:
        return 300.0
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not 0 <= value <= MAX_IDLE_TIMEOUT):
        raise BadRequest(f"idle_timeout must be a number of seconds from 0 to {MAX_IDLE_TIMEOUT:g} "
                         "(30 days)")
    return float(value)


def create_recruiter(s, spec, providers):
    fields = check_recruiter(spec, providers)
    batch = task_store.get_or_create_batch(s, fields.pop("batch"))
    r = Recruiter(batch=batch, **fields)
    s.add(r)
    s.flush()
    record(s, "recruiter.created", r, batch=batch.name, provider=r.provider)
    return r


def list_recruiters(s, batch=None):
    """Recruiters in the order they recruit (rank, then age), of one batch or all."""
    q = select(Recruiter).order_by(Recruiter.rank, Recruiter.id)
    if batch is not None:
        q = q.where(Recruiter.batch_id == task_store.get_batch(s, batch).id)
    return s.scalars(q).all()


def delete_recruiter(s, recruiter):
    """Stop the recruiter from renting anything more. Its live hosts are not touched: they
    keep serving (and costing) until idle or deleted by hand, and their instance rows stay
    in the ledger with recruiter_id set to NULL by the foreign key (their batch_id remains,
    so the batch's cost still counts them)."""
    live = s.scalar(select(func.count()).where(Instance.recruiter_id == recruiter.id,
                                               Instance.status.in_(LIVE_HOSTS)))
    record(s, "recruiter.deleted", recruiter, batch=recruiter.batch.name, live_hosts=live)
    s.delete(recruiter)
    return live


def recruiter_dicts(s, recruiters, now=None):
    """Recruiters as the API shows them: their fields, their cost, and what remains to do
    in their batch (with one query for all costs and one for all counts)."""
    costs = cost_of(s, [r.id for r in recruiters], now=now)
    counts = task_store.batch_counts(s, list({r.batch_id for r in recruiters}))
    return [{**r.to_dict(), "cost": costs.get(r.id) or no_cost(),
             "remaining": (counts.get(r.batch_id) or {}).get("remaining", 0)} for r in recruiters]


def recruiter_dict(s, r, now=None):
    return recruiter_dicts(s, [r], now)[0]
