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


def test_an_end_and_the_start_it_makes_room_for_go_in_one_request(live, procs):
    """A real worker (concurrency 1, two tasks queued) ends a task and starts the next one at
    once: both go to the server in one request, so a busy worker sends about one report
    request per task, not two (the server's work per task was two requests)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    def report_requests():
        text = httpx.get(live.url + "/metrics", timeout=30).text
        return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == "scitq_report_seconds_count")

    live.add_task("true", batch="warm")
    procs.worker(live.url, "w", 1, "--prefetch", "2")
    live.wait_batch("warm", interval=0.2, timeout=60)
    before = report_requests()
    live.add_tasks([{"command": "sleep 0.3"} for _ in range(12)], batch="b")
    summary = live.wait_batch("b", interval=0.2, timeout=120)
    assert summary["counts"]["succeeded"] == 12
    sent = report_requests() - before
    assert 6 <= sent <= 16, f"{sent} report requests for 12 tasks"     # two per task: 24


def test_a_full_worker_asks_for_no_more():
    """`more` asks the server to fill the worker in its answer: a worker holding all it may
    (its slots, then its queue as deep as it wants) asks for nothing, one with room does, a
    draining one never does."""
    w = Worker("http://127.0.0.1:9", name="w", concurrency=2, prefetch=1)
    w.running = {1: object(), 2: object()}
    assert w._report_body([], None).get("more") is True        # its queue is empty
    w.queue.append(object())
    assert "more" not in w._report_body([], None)              # 2 running + 1 queued
    w.running.pop(1)                                           # an end frees a slot
    assert w._report_body([], None).get("more") is True
    w.draining = True
    assert "more" not in w._report_body([], None)


def test_one_task_waits_on_the_worker_while_the_server_has_more():
    """Tasks of seconds need no queue, but while the server has tasks left for every slot a
    worker keeps one queued: the end of a task and the start of the next then go in one
    request. An answer with fewer tasks than asked ends that, and the queued task goes back
    when it waits (trim)."""
    w = Worker("http://127.0.0.1:9", name="w", concurrency=2)
    w._take, w._start_ready = w.queue.extend, lambda: None     # no task is run here
    w.sizer.task_ended(20.0)
    w.sizer.answered(0.05)
    w.running = {1: object(), 2: object()}
    assert (w.depth, w._report_body([], None).get("more")) == (0, None)     # full: asks nothing
    w.running.pop(1)
    assert w._report_body([], None)["more"] and w._asked == 1
    w._acknowledged([], None, {"refused": [], "assignments": [{"execution_id": 7}]})
    assert w.depth == 1                          # the server gave all it was asked
    w.queue.clear()
    w.running[1] = object()
    assert w._report_body([], None)["more"] and w._asked == 1               # room for one queued
    w._acknowledged([], None, {"refused": [], "assignments": []})
    assert w.depth == 0                          # none left there: no queue

    pinned = Worker("http://127.0.0.1:9", name="p", concurrency=2, prefetch=0)
    pinned._take, pinned._start_ready = pinned.queue.extend, lambda: None
    pinned.running = {1: object()}
    pinned._report_body([], None)
    pinned._acknowledged([], None, {"refused": [], "assignments": [{"execution_id": 8}]})
    assert pinned.depth == 0                     # --prefetch pins it
