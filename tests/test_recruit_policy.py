"""policy.plan() called directly, on made-up state: no database, no Flask, no provider. What it
rents, and the fitting offers it ruled out with their reason (what `scitq recruiter plan` shows)."""
from scitq.server.recruit.policy import Host, Offer, Rule, plan

OFFERS = [Offer("ovh", region, name, cpu, ram, disk, hourly_cost=price)
          for region in ("GRA11", "SBG5")
          for name, cpu, ram, disk, price in (("b2-7", 2, 6.8, 50, 0.0681),
                                              ("b2-15", 4, 14.6, 100, 0.1361),
                                              ("c2-30", 8, 29.3, 200, 0.2722))]


def rule(**fields):
    spec = {"id": 1, "batch_id": 1, "provider": "ovh", "max_workers": 2, "tasks_per_worker": 10,
            "remaining": 100, "min_cpu": 4, **fields}
    return Rule(**spec)


def rented(p):
    return [(rid, o.region, o.name) for rid, o in p.create]


def ruled(p):
    return [(rid, o.region, o.name, why) for rid, o, why in p.ruled_out]


def test_the_cheapest_fitting_offer_is_rented_and_nothing_is_ruled_out():
    p = plan([rule()], [], OFFERS)
    assert rented(p) == [(1, "GRA11", "b2-15"), (1, "GRA11", "b2-15")]
    assert p.ruled_out == [] and p.delete == [] and p.reuse == []


def test_max_hourly_cost_rules_out_the_second_host_and_the_dearer_flavors():
    p = plan([rule(max_hourly_cost=0.2)], [], OFFERS)
    assert rented(p) == [(1, "GRA11", "b2-15")]
    reasons = {(region, name): why for _, region, name, why in ruled(p)}
    assert set(reasons) == {("GRA11", "b2-15"), ("SBG5", "b2-15"), ("GRA11", "c2-30"), ("SBG5", "c2-30")}
    assert reasons[("GRA11", "b2-15")] == "max hourly cost 0.2: it would make 0.2722 an hour"
    assert all(why.startswith("max hourly cost 0.2") for why in reasons.values())


def test_a_full_quota_and_an_unhealthy_triple_are_ruled_out_and_the_next_choice_taken():
    unhealthy = {("ovh", "SBG5", "b2-15"): "ovh: b2-15 is out of stock in SBG5"}
    p = plan([rule(max_workers=1)], [], OFFERS, quotas={("ovh", "GRA11"): 0}, unhealthy=unhealthy)
    assert rented(p) == [(1, "SBG5", "c2-30")]
    assert ruled(p) == [(1, "GRA11", "b2-15", "quota: no instance left in GRA11"),
                        (1, "SBG5", "b2-15", "unhealthy: ovh: b2-15 is out of stock in SBG5"),
                        (1, "GRA11", "c2-30", "quota: no instance left in GRA11")]
    # A plain set of triples (no reason known) still says why.
    p = plan([rule(max_workers=1, regions=("SBG5",))], [], OFFERS, unhealthy={("ovh", "SBG5", "b2-15")})
    assert ruled(p) == [(1, "SBG5", "b2-15", "unhealthy: a create failed there lately")]


def test_budget_rules_out_what_would_pass_it_and_quota_room_is_shared_by_rank():
    p = plan([rule(budget=1.0, spent=0.99)], [], OFFERS, horizon=3600)
    assert rented(p) == []
    assert all(why.startswith("budget 1: 0.99 spent") for *_, why in ruled(p))
    first, second = rule(id=1, rank=1, max_workers=1), rule(id=2, rank=0, max_workers=1)
    p = plan([first, second], [], OFFERS, quotas={("ovh", "GRA11"): 1, ("ovh", "SBG5"): 0})
    assert rented(p) == [(2, "GRA11", "b2-15")]          # the lower rank recruits first
    assert (1, "GRA11", "b2-15", "quota: no instance left in GRA11") in ruled(p)


def test_broken_and_idle_hosts_go_and_a_live_host_counts_toward_want():
    offer = OFFERS[1]
    hosts = [Host(1, 1, "ovh", "GRA11", "b2-15", "deploying", age=1000.0),
             Host(2, 1, "ovh", "GRA11", "b2-15", "running", age=50.0, hourly_cost=0.1361,
                  worker="running", has_work=True, offer=offer),
             Host(3, None, "ovh", "GRA11", "b2-15", "running", age=900.0, hourly_cost=0.1361,
                  worker="running", idle_for=400.0, offer=offer)]
    p = plan([rule(max_workers=3, max_hourly_cost=0.3)], hosts, OFFERS, deploy_timeout=900)
    assert [(i, why.split(" (")[0]) for i, why in p.delete] == [
        (1, "no worker registered within the deploy timeout")]
    assert p.reuse == [(3, 1)]                  # the idle host serves this recruiter instead
    assert rented(p) == []                      # a third would pass 0.3 an hour
    assert ruled(p)[0][:3] == (1, "GRA11", "b2-15")
