"""The background loops that must run once across server processes, and the provider calls made
outside any transaction, shown on real `scitq server` processes and real workers.

The provider is tests/fakes/slowcloud.py: the `static` provider (hosts listed, their renting
kept in a file several servers share) whose regions(), flavors() and quotas() take seconds,
run inside the real server by `python -m fakes.slowcloud`; its deploys only log, and the test
starts each host's worker under the instance's name, as a deploy would."""
import os
import sys
import time
from pathlib import Path

import yaml
from sqlalchemy import func, select

from fakes.slowcloud import calls
from procs import wait_until
from scitq.client import Client
from scitq.server.db import Database
from scitq.server.models import Execution, Instance, Task
from scitq.status import ExecutionStatus, TaskStatus

TESTS = Path(__file__).parent
LIVE = (ExecutionStatus.ASSIGNED.value, ExecutionStatus.RUNNING.value)


def slow_server(procs, db_url, tmp_path, name, settings, *args):
    """A real server process knowing the provider "slow" with these settings."""
    providers = tmp_path / "providers.yaml"
    providers.write_text(yaml.safe_dump({"slow": settings}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    # The deploys only log: the URL told to them is never reached (a documentation address).
    return procs.server(db_url, "--providers", str(providers), "--recruit-tick", "0.3",
                        "--public-url", "http://192.0.2.1:9", *args,
                        env=env, module="fakes.slowcloud", data_dir=tmp_path / name)


def lab(n):
    return [{"name": f"h{i}", "address": f"h{i}.invalid", "cpu": 2, "region": "lab",
             "flavor": "two"} for i in range(1, n + 1)]


def test_a_task_starts_and_ends_while_a_provider_answers_a_recruitment_pass(db_url, procs, tmp_path):
    """quotas() takes 5 s (so do regions() and flavors()): while a pass waits on it, a worker's
    task is assigned, starts and ends (its reports and the dispatch are written meanwhile)."""
    log = tmp_path / "calls.jsonl"
    # Its one host is rented already (by someone else): the quota leaves no room, nothing is made.
    (tmp_path / "static.json").write_text('{"h1": {"name": "someone", "tags": {}}}')
    server = slow_server(procs, db_url, tmp_path, "data", {
        "delay": 5, "calls": str(log), "state": str(tmp_path / "static.json"), "hosts": lab(1)})
    with Client(server.url) as c:
        c.create_batch("wants-hosts")
        c.add_task("true", batch="wants-hosts")
        c.create_batch("work")
        procs.worker(server.url, "w1", 1, "--batch", "work")
        wait_until(lambda: any(w["name"] == "w1" and w["status"] == "running" for w in c.workers()),
                   timeout=60, what="worker w1 registered")
        c.add_recruiter("wants-hosts", "slow", flavor="two", regions=["lab"], max_workers=1,
                        tasks_per_worker=1, concurrency=1)
        shown = []
        for _ in range(3):      # a loaded machine may miss one call's 5 s: the next one then
            call = wait_until(lambda: next((x for x in calls(log) if x[0] == "quotas" and x[2] is None),
                                           None), timeout=60, what="a quotas() call under way")
            task = c.add_task("true", batch="work")["id"]
            wait_until(lambda: c.task(task)["status"] == TaskStatus.SUCCEEDED.value, timeout=30,
                       interval=0.05, what=f"task {task} succeeded")
            seen = time.time()
            end = wait_until(lambda: dict((x[1], x[2]) for x in calls(log))[call[1]], timeout=30,
                             what="the quotas() call's end")
            shown.append((call[1], seen, end))
            if seen < end:
                break
        # The task was submitted after the call began, and succeeded before it ended.
        assert shown[-1][1] < shown[-1][2], shown
        assert end - call[1] >= 5.0


def test_two_servers_on_one_postgresql_rent_once_and_run_each_task_once(pg_db, procs, tmp_path):
    """Two server processes on one PostgreSQL, each with its reconciler (a pass every 0.3 s,
    each waiting 1 s on the provider's quota), workers split between them: the hosts rented
    are the ones wanted (with a lock per process only, both passes saw no host and 6 were
    ordered), no task runs twice at once, and all succeed."""
    settings = {"delay": 1, "state": str(tmp_path / "static.json"), "hosts": lab(6)}
    servers = [slow_server(procs, pg_db, tmp_path, name, settings) for name in ("a", "b")]
    db = Database(pg_db)
    try:
        with Client(servers[0].url) as c:
            c.refresh_flavors("slow")     # the passes then overlap on quotas() alone
            c.create_batch("b")
            c.add_tasks([{"command": "sleep 0.2"} for _ in range(40)], batch="b")
            # 40 tasks at 10 a host, at most 3 hosts: 3 wanted, of the 6 the lab has.
            c.add_recruiter("b", "slow", flavor="two", regions=["lab"], max_workers=3,
                            tasks_per_worker=10, concurrency=2, idle_timeout=600)
            started = {}

            def workers_for_the_hosts():
                with db.read() as s:
                    names = s.scalars(select(Instance.name).where(Instance.status == "deploying")).all()
                for name in names:
                    if name not in started:
                        started[name] = procs.worker(servers[len(started) % 2].url, name, 2)
                return len(started) >= 3

            twice = []

            def done():
                with db.read() as s:
                    twice.extend(s.execute(select(Execution.task_id).where(Execution.status.in_(LIVE))
                                           .group_by(Execution.task_id).having(func.count() > 1)).scalars())
                    left = s.scalar(select(func.count()).select_from(Task).where(
                        Task.status != TaskStatus.SUCCEEDED.value))
                workers_for_the_hosts()
                return left == 0

            wait_until(done, timeout=240, interval=0.2, what="every task succeeded")
            time.sleep(2)       # more passes of both reconcilers, the batch drained
            with db.read() as s:
                instances = s.execute(select(Instance.name, Instance.status)).all()
                runs = s.execute(select(Execution.task_id, Execution.status, Execution.assigned_at,
                                        Execution.ended_at)).all()
            assert twice == []
            assert len(instances) == 3, instances           # any status: never a 4th order
            assert len(started) == 3
            assert all(status == "running" for _, status in instances), instances
            by_task = {}
            for task_id, status, assigned, ended in runs:
                by_task.setdefault(task_id, []).append((assigned, ended, status))
            assert len(by_task) == 40
            for task_id, executions in by_task.items():
                executions.sort()
                assert executions[-1][2] == ExecutionStatus.SUCCEEDED.value
                for (_, ended, _), (assigned, _, _) in zip(executions, executions[1:]):
                    assert ended is not None and ended <= assigned, (task_id, executions)
            assert c.batch("b")["counts"]["succeeded"] == 40
    finally:
        db.dispose()
