"""Recruitment policy: which hosts to rent, reuse and delete, as a pure function of the state.

`plan(now, rules, hosts, offers, ...)` knows no database, no provider and no clock of its
own, so it is tested at 1,000 hosts with made-up state (tests/test_recruit_policy.py). The
mechanism that observes the state and carries the plan out is `scitq.recruit.loop`.

What it decides, in this order (DESIGN.md section 6):
1. broken hosts go: a worker that never registered within the deploy timeout, a worker that
   is lost or gone offline;
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

    def __bool__(self):
        return bool(self.create or self.reuse or self.delete)


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
    if h.worker is None and h.age > deploy_timeout:
        return f"no worker registered within the deploy timeout ({deploy_timeout:g}s)"
    if h.worker in ("lost", "offline"):
        return f"its worker is {h.worker}"
    return None


def plan(rules, hosts, offers, *, unhealthy=frozenset(), quotas=None, deploy_timeout=900.0,
         horizon=60.0):
    """What to do now. `unhealthy`: (provider, region, flavor) triples to avoid; `quotas`:
    {(provider, region): instances that may still be created} (missing: no limit known);
    `horizon`: seconds until the decisions are looked at again (the budget must hold
    until then)."""
    out = Plan()
    gone = set()
    by_rule = {r.id: r for r in rules}

    def drop(host, reason):
        if host.id not in gone:
            gone.add(host.id)
            out.delete.append((host.id, reason))

    for h in hosts:                                            # 1. broken hosts
        why = _broken(h, deploy_timeout)
        if why:
            drop(h, why)

    mine = {}
    for h in hosts:
        if h.id not in gone:
            mine.setdefault(h.recruiter_id, []).append(h)

    for rule in rules:                                         # 2. budgets
        if rule.budget is None:
            continue
        live = mine.get(rule.id, [])
        hourly = sum(h.hourly_cost for h in live)
        # Idle hosts go first, then the newest (the least work lost).
        for h in sorted(live, key=lambda h: (h.idle_for is None, h.age)):
            if rule.spent + hourly * horizon / 3600 <= rule.budget:
                break
            drop(h, f"budget {rule.budget:g} reached")
            hourly -= h.hourly_cost
        mine[rule.id] = [h for h in live if h.id not in gone]

    quotas = dict(quotas or {})
    drained = [h for h in hosts if h.id not in gone and h.worker == "running"
               and h.idle_for is not None and not h.has_work]
    ranked = sorted(rules, key=lambda r: (r.rank, r.id))
    for rule in ranked:                                        # 3. reuse, then rent
        live = mine.get(rule.id, [])
        deficit = want(rule) - len(live)
        if deficit <= 0:
            continue
        hourly = sum(h.hourly_cost for h in live)

        def affordable(cost):
            cost = cost or 0.0
            if rule.max_hourly_cost is not None and hourly + cost > rule.max_hourly_cost + 1e-9:
                return False
            if rule.budget is not None and rule.spent + (hourly + cost) * horizon / 3600 > rule.budget:
                return False
            return True

        for h in list(drained):
            if deficit <= 0:
                break
            if h.recruiter_id == rule.id or h.offer is None or not fits(rule, h.offer):
                continue
            if not affordable(h.hourly_cost):
                continue
            drained.remove(h)
            out.reuse.append((h.id, rule.id))
            hourly += h.hourly_cost
            deficit -= 1
        choices = sorted((o for o in offers if fits(rule, o) and o.key not in unhealthy),
                         key=lambda o: (o.hourly_cost is None, o.hourly_cost or 0.0, o.cpu, o.name))
        for offer in choices:
            while deficit > 0 and affordable(offer.hourly_cost):
                room = quotas.get((offer.provider, offer.region))
                if room is not None and room <= 0:
                    break
                if room is not None:
                    quotas[(offer.provider, offer.region)] = room - 1
                out.create.append((rule.id, offer))
                hourly += offer.hourly_cost or 0.0
                deficit -= 1
            if deficit <= 0:
                break

    for h in drained:                                          # 4. idle hosts go
        rule = by_rule.get(h.recruiter_id)
        timeout = rule.idle_timeout if rule else DEFAULT_IDLE_TIMEOUT
        if h.idle_for >= timeout:
            drop(h, f"idle for {h.idle_for:.0f}s with no work left")
    return out
