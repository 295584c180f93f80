"""The worker's queue of reports: an end folds into its start while that start waits here,
and only then (not once sent, not without a pid, not past a signal's report)."""
import asyncio

from scitq.worker.worker import Worker


def queued(*calls, send_first=0):
    async def scenario():
        w = Worker("http://127.0.0.1:9", name="w")
        for i, report in enumerate(calls):
            if i == send_first and send_first:
                w._outgoing(send_first)
            w._report(report)
        if w._running_timer is not None:
            w._running_timer.cancel()
        return w.reports
    return asyncio.run(scenario())


def test_an_end_takes_the_place_of_its_unsent_start():
    reports = queued({"execution_id": 1, "status": "running", "pid": 10},
                     {"execution_id": 2, "status": "running", "pid": 20},
                     {"execution_id": 1, "status": "succeeded", "return_code": 0},
                     {"execution_id": 2, "status": "failed", "return_code": 4})
    assert reports == [{"execution_id": 1, "status": "succeeded", "return_code": 0, "pid": 10},
                       {"execution_id": 2, "status": "failed", "return_code": 4, "pid": 20}]


def test_a_start_already_sent_is_not_rewritten():
    start = {"execution_id": 1, "status": "running", "pid": 10}
    reports = queued(start, {"execution_id": 1, "status": "succeeded", "return_code": 0}, send_first=1)
    assert start == {"execution_id": 1, "status": "running", "pid": 10}
    assert [r["status"] for r in reports] == ["running", "succeeded"]


def test_no_fold_without_a_pid_or_across_a_signal():
    reports = queued({"execution_id": 1, "status": "running"},        # a container's start
                     {"execution_id": 1, "status": "succeeded", "return_code": 0},
                     {"execution_id": 2, "status": "running", "pid": 20},
                     {"execution_id": 2, "status": "signaled", "signal": "pause", "seq": 1},
                     {"execution_id": 2, "status": "failed", "return_code": -9})
    assert [(r["execution_id"], r["status"]) for r in reports] == \
        [(1, "running"), (1, "succeeded"), (2, "running"), (2, "signaled"), (2, "failed")]
