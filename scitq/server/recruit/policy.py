"""Recruitment policy: which hosts to rent, reuse and delete, as a pure function of the state.

`plan(now, rules, hosts, offers, ...)` knows no database, no provider and no clock of its
own, so it is tested at 1,000 hosts with made-up state (tests/test_recruit_policy.py). The
mechanism that observes the state and carries the plan out is `scitq.server.recruit.reconciler`.

What it decides, in this order (DESIGN.md section 6):
1. broken hosts go: a worker that never registered within the deploy timeout (its recruiter's,
   else the server's), a deploy that failed for good, a worker that is lost or gone offline;
2. a budget is never exceeded: when what a recruiter spent plus what its hosts will cost
   until the next look passes its budget, hosts go (idle ones first);
3. per recruiter, by rank: want = min(max_workers, ceil(remaining tasks / tasks_per_worker));
   the difference is filled first with idle hosts whose batch drained (reuse), then with
   the cheapest offer that fits, outside the unhealthy (provider, region, flavor) triples,
   within quotas, max_hourly_cost and budget;
4. hosts idle for their recruiter's idle_timeout, with no work left in their batch, go.
Scale-down happens only through idleness (a host with work is never taken back for a lower
`want`): that is the hysteresis that keeps creates and deletes from flapping.
"""
import math
from dataclasses import dataclass, field

DEFAULT_IDLE_TIMEOUT = 300.0    # seconds, for a host whose recruiter was deleted


@dataclass(frozen=True)
class Rule:
    """A recruiter as the policy sees it."""
    id: int
    batch_id: int
    provider: str
    max_workers: int
    tasks_per_worker: int
    remaining: int                    # tasks of its batch not finished yet
    rank: int = 0
    regions: tuple | None = None      # None: any region
    flavor: str | None = None         # a flavor name, or the minimums below
    min_cpu: int | None = None
    min_ram: float | None = None
    min_disk: float | None = None
    gpu: bool = False
    spot: bool = False
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    deploy_timeout: float | None = None   # None: the server's (plan's deploy_timeout)
    max_hourly_cost: float | None = None
    budget: float | None = None
    spent: float = 0.0                # cost of its hosts so far (closed and accruing)


@dataclass(frozen=True)
class Offer:
    """A flavor that can be rented, from the catalog."""
    provider: str
    region: str
    name: str
    cpu: int
    ram: float
    disk: float
    gpu: int = 0
    hourly_cost: float | None = None
    spot: bool = False

    @property
    def key(self):
        return (self.provider, self.region, self.name)


@dataclass(frozen=True)
class Host:
    """A live instance (creating, deploying or running) and its worker."""
    id: int
    recruiter_id: int | None
    provider: str
    region: str
    flavor: str
    status: str                       # creating / deploying / running
    age: float                        # seconds since it was ordered
    hourly_cost: float = 0.0
    worker: str | None = None         # its worker's status; None: not registered yet
    idle_for: float | None = None     # seconds its worker has run nothing; None: busy
    has_work: bool = False            # its batch has tasks pending or waiting
    offer: Offer | None = None        # its flavor in the catalog (for reuse), if known
    deploy_failed: bool = False       # its deploy job ran out of attempts: it will never serve


@dataclass
class Plan:
    create: list = field(default_factory=list)    # (rule id, Offer)
    reuse: list = field(default_factory=list)     # (host id, rule id)
    delete: list = field(default_factory=list)    # (host id, reason)
    # (rule id, Offer, reason): a fitting offer looked at while hosts were missing and not
    # rented (or not for all of them), and why: what `scitq recruiter plan` shows as ruled out.
    ruled_out: list = field(default_factory=list)
    gone: set = field(default_factory=set, repr=False, compare=False)   # ids in delete

    def __bool__(self):
        return bool(self.create or self.reuse or self.delete)

    def drop(self, host, reason):
        """Delete a host (once, for the first reason found)."""
        if host.id not in self.gone:
            self.gone.add(host.id)
            self.delete.append((host.id, reason))


def want(rule):
    return min(rule.max_workers, math.ceil(rule.remaining / rule.tasks_per_worker))


def fits(rule, offer):
    if offer.provider != rule.provider or offer.spot != rule.spot:
        return False
    if rule.regions is not None and offer.region not in rule.regions:
        return False
    if rule.flavor is not None:
        return offer.name == rule.flavor
    return ((rule.min_cpu is None or offer.cpu >= rule.min_cpu)
            and (rule.min_ram is None or offer.ram >= rule.min_ram)
            and (rule.min_disk is None or offer.disk >= rule.min_disk)
            and (offer.gpu > 0) == rule.gpu)


def _broken(h, deploy_timeout):
    """Why a host will never serve (so is deleted now), or None."""
    if h.worker is None and h.deploy_failed:
        return "its deploy failed for good"
    # Reached, not passed: the first pass to see the timeout reached deletes the host.
    if h.worker is None and h.age >= deploy_timeout:
        return f"no worker registered within the deploy timeout ({deploy_timeout:g}s)"
    if h.worker in ("lost", "offline"):
        return f"its worker is {h.worker}"
    return None


def plan(rules, hosts, offers, *, unhealthy=frozenset(), quotas=None, deploy_timeout=900.0,
         horizon=60.0):
    """What to do now. `unhealthy`: (provider, region, flavor) triples to avoid, a set or a
    {triple: why} mapping; `quotas`: {(provider, region): instances that may still be created}
    (missing: no limit known); `horizon`: seconds until the decisions are looked at again (the
    budget must hold until then)."""
    out = Plan()
    by_rule = {r.id: r for r in rules}
    _drop_broken(out, hosts, by_rule, deploy_timeout)                  # 1. broken hosts
    mine = {}
    for h in hosts:
        if h.id not in out.gone:
            mine.setdefault(h.recruiter_id, []).append(h)
    _keep_budgets(out, rules, mine, horizon)                           # 2. budgets
    drained = [h for h in hosts if h.id not in out.gone and h.worker == "running"
               and h.idle_for is not None and not h.has_work]
    quotas = dict(quotas or {})
    for rule in sorted(rules, key=lambda r: (r.rank, r.id)):           # 3. reuse, then rent
        _fill(out, rule, mine.get(rule.id, []), drained, offers, unhealthy, quotas, horizon)
    for h in drained:                                                  # 4. idle hosts go
        rule = by_rule.get(h.recruiter_id)
        timeout = rule.idle_timeout if rule else DEFAULT_IDLE_TIMEOUT
        if h.idle_for >= timeout:
            out.drop(h, f"idle for {h.idle_for:.0f}s with no work left")
    return out


def _drop_broken(out, hosts, by_rule, deploy_timeout):
    for h in hosts:
        rule = by_rule.get(h.recruiter_id)
        own = rule.deploy_timeout if rule is not None else None
        why = _broken(h, deploy_timeout if own is None else own)
        if why:
            out.drop(h, why)


def _keep_budgets(out, rules, mine, horizon):
    """Hosts go while a recruiter's spending until the next look would pass its budget."""
    for rule in rules:
        if rule.budget is None:
            continue
        live = mine.get(rule.id, [])
        hourly = sum(h.hourly_cost for h in live)
        # Idle hosts go first, then the newest (the least work lost).
        for h in sorted(live, key=lambda h: (h.idle_for is None, h.age)):
            if rule.spent + hourly * horizon / 3600 <= rule.budget:
                break
            out.drop(h, f"budget {rule.budget:g} reached")
            hourly -= h.hourly_cost
        mine[rule.id] = [h for h in live if h.id not in out.gone]


class _Spend:
    """What a recruiter's hosts cost an hour as the plan adds to them, and what it may add."""

    def __init__(self, rule, hourly, horizon):
        self.rule, self.hourly, self.horizon = rule, hourly, horizon

    def refusal(self, cost):
        """Why one more host at `cost` an hour is refused (max hourly cost, budget), or None."""
        rule, total = self.rule, self.hourly + (cost or 0.0)
        if rule.max_hourly_cost is not None and total > rule.max_hourly_cost + 1e-9:
            return f"max hourly cost {rule.max_hourly_cost:g}: it would make {total:.4g} an hour"
        if rule.budget is not None and rule.spent + total * self.horizon / 3600 > rule.budget:
            return f"budget {rule.budget:g}: {rule.spent:.2f} spent, it would pass it before the next look"
        return None

    def add(self, cost):
        self.hourly += cost or 0.0


def _fill(out, rule, live, drained, offers, unhealthy, quotas, horizon):
    """One recruiter's missing hosts: drained hosts first, then the cheapest offers that fit."""
    deficit = want(rule) - len(live)
    if deficit <= 0:
        return
    spend = _Spend(rule, sum(h.hourly_cost for h in live), horizon)
    deficit -= _reuse(out, rule, drained, deficit, spend)
    # The region last: equal offers are taken in the same order on every pass and preview.
    choices = sorted((o for o in offers if fits(rule, o)),
                     key=lambda o: (o.hourly_cost is None, o.hourly_cost or 0.0, o.cpu, o.name, o.region))
    for offer in choices:
        if deficit <= 0:
            break
        deficit -= _rent(out, rule, offer, deficit, spend, unhealthy, quotas)


def _reuse(out, rule, drained, deficit, spend):
    """Idle hosts of drained batches that fit, moved to this recruiter; returns how many."""
    n = 0
    for h in list(drained):
        if n >= deficit:
            break
        if h.recruiter_id == rule.id or h.offer is None or not fits(rule, h.offer):
            continue
        if spend.refusal(h.hourly_cost):
            continue
        drained.remove(h)
        out.reuse.append((h.id, rule.id))
        spend.add(h.hourly_cost)
        n += 1
    return n


def _rent(out, rule, offer, deficit, spend, unhealthy, quotas):
    """Up to `deficit` hosts of one offer; returns how many. Stopping short for a reason
    (unhealthy, max hourly cost, budget, quota) records the offer as ruled out."""
    why = _unhealthy(unhealthy, offer.key)
    n = 0
    while why is None and n < deficit:
        why = spend.refusal(offer.hourly_cost) or _take_quota(quotas, offer)
        if why is None:
            out.create.append((rule.id, offer))
            spend.add(offer.hourly_cost)
            n += 1
    if why is not None:
        out.ruled_out.append((rule.id, offer, why))
    return n


def _unhealthy(unhealthy, key):
    if key not in unhealthy:
        return None
    why = unhealthy.get(key) if isinstance(unhealthy, dict) else None
    return f"unhealthy: {why}" if why else "unhealthy: a create failed there lately"


def _take_quota(quotas, offer):
    """Count one instance against its region's quota; why not when none is left, else None."""
    where = (offer.provider, offer.region)
    room = quotas.get(where)
    if room is None:
        return None
    if room <= 0:
        return f"quota: no instance left in {offer.region}"
    quotas[where] = room - 1
    return None
