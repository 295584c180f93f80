"""The admission of worker calls: a few run at once, some wait, the rest are refused with a
503 and a spread Retry-After; a worker kept out for a third of its lease waits instead."""
import threading
import time

import pytest

from scitq.errors import Overloaded
from scitq.server.api.workers import Admission


def hold(admission, worker_id, release, entered):
    """A call of `worker_id` that runs until `release` is set."""
    def run():
        with admission(worker_id, 30.0):
            entered.set()
            release.wait(10)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_past_the_waiting_cap_a_call_is_refused_with_a_spread_retry_after():
    admission = Admission(running=1, waiting=1)
    release, entered = threading.Event(), threading.Event()
    with admission(1, 30.0):            # every worker got in just now
        pass
    with admission(2, 30.0):
        pass
    running = hold(admission, 1, release, entered)
    assert entered.wait(5)
    waiting_in = threading.Event()
    waiter = hold(admission, 1, release, waiting_in)
    deadline = time.monotonic() + 5
    while admission.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert admission.waiting == 1 and not waiting_in.is_set()
    retry_after = set()
    for _ in range(20):
        with pytest.raises(Overloaded) as refused:
            with admission(2, 30.0):
                pass
        assert refused.value.http_status == 503
        retry_after.add(refused.value.retry_after)
    assert retry_after <= set(range(5, 16)) and len(retry_after) > 1
    assert admission.refused == 20
    release.set()
    running.join(5)
    waiter.join(5)
    assert waiting_in.is_set() and admission.waiting == 0


def test_a_worker_kept_out_for_a_third_of_its_lease_waits_past_the_cap():
    admission = Admission(running=1, waiting=0)
    release, entered = threading.Event(), threading.Event()
    running = hold(admission, 1, release, entered)
    assert entered.wait(5)
    with pytest.raises(Overloaded):     # just started: not yet overdue
        with admission(2, 0.2):
            pass
    time.sleep(0.25)                    # none of its calls got in for longer than that
    got_in = threading.Event()

    def overdue():
        with admission(2, 0.2):
            got_in.set()
    late = threading.Thread(target=overdue, daemon=True)
    late.start()
    time.sleep(0.1)
    assert admission.waiting == 1 and not got_in.is_set()     # waiting, not refused
    release.set()
    late.join(5)
    running.join(5)
    assert got_in.is_set()
    release.clear()
    entered.clear()
    again = hold(admission, 3, release, entered)
    assert entered.wait(5)
    try:
        with pytest.raises(Overloaded):     # it got in just now: on time again, refused
            with admission(2, 0.2):
                pass
    finally:
        release.set()
        again.join(5)
