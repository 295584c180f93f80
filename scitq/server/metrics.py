"""What /metrics tells Prometheus, kept cheap at a million tasks.

Two kinds of figures, chosen by whether they must equal what the database holds:

- Counts of what exists now (tasks by batch and status, workers by status, busy and free
  slots, rented hosts, cost, jobs) are gauges read from the database, made at most once per
  CACHE_SECONDS however many scrapers ask. Tasks by batch and status come from task_count,
  kept by database triggers in the transaction of every task write (models.TaskCount): a
  few rows per batch, not a scan of the task table. They stay right with several server
  processes on one PostgreSQL and across restarts, which counters kept in one process could
  not.
- What happened (executions assigned, started and ended, job outcomes, events by kind) are
  counters of this process, counted when the transaction that recorded the event commits
  (Database.on_events), so a rolled-back change is never counted. With several processes,
  each is scraped and PromQL sums them (sum by (status) (rate(...))), as for any
  multi-process service. Latencies are histograms of this process too.
"""
import threading
import time

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select, text

from scitq.server.recruit.ledger import cost_of
from scitq.server import task_store
from scitq.server.access import access
from scitq.server.models import Batch, Instance, Job, utcnow
from scitq.server.ui import dashboard as dash
from scitq.status import ExecutionStatus, TaskStatus

CACHE_SECONDS = 5.0      # the database's figures are read at most this often
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENDED = {f"execution.{s.value}" for s in ExecutionStatus if not s.is_active}
# What JobRunner._finish records: a failed attempt with tries left puts the job back to pending.
JOB_OUTCOMES = {"job.succeeded": "succeeded", "job.failed": "failed", "job.pending": "retrying"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One per app (tests make many apps in one process: each has its own registry)."""

    def __init__(self, db):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter("scitq_events", "State changes recorded, by kind", ["kind"], registry=r)
        self.assigned = Counter("scitq_executions_assigned", "Executions handed to workers",
                                registry=r)
        self.started = Counter("scitq_executions_started", "Executions a worker started",
                               registry=r)
        self.ended = Counter("scitq_executions_ended", "Executions ended, by final status",
                             ["status"], registry=r)
        self.jobs = Counter("scitq_job_outcomes", "Ends of job attempts: succeeded, failed "
                            "(no attempt left) or retrying", ["outcome"], registry=r)
        self.dispatch_seconds = Histogram("scitq_dispatch_seconds", "Duration of a dispatch "
                                          "pass (claims for every idle worker)",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.report_seconds = Histogram("scitq_report_seconds", "Duration of a worker's "
                                        "reports request, from arrival to answer",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("scitq_http_request_seconds", "Duration of HTTP "
                                         "requests, by method and endpoint",
                                         ["method", "endpoint"], buckets=LATENCY_BUCKETS,
                                         registry=r)
        r.register(DatabaseCollector(db))
        db.on_events.append(self.committed)

    def committed(self, kinds):
        """Count the events of a transaction that committed ({kind: n})."""
        for kind, n in kinds.items():
            self.events.labels(kind).inc(n)
            if kind == "execution.assigned":
                self.assigned.inc(n)
            elif kind == "execution.running":
                self.started.inc(n)
            elif kind in ENDED:
                self.ended.labels(kind.removeprefix("execution.")).inc(n)
            elif kind in JOB_OUTCOMES:
                self.jobs.labels(JOB_OUTCOMES[kind]).inc(n)

    def request_done(self, method, endpoint, seconds):
        self.request_seconds.labels(method, endpoint or "none").observe(seconds)
        if endpoint == "api.workers_reports":
            self.report_seconds.observe(seconds)

    def exposition(self):
        return generate_latest(self.registry)


class DatabaseCollector:
    """The gauges read from the database, cached for CACHE_SECONDS."""

    def __init__(self, db):
        self.db = db
        self._lock = threading.Lock()
        self._at = None
        self._families = []

    def describe(self):
        return []       # no collection at registration: the database may not be up yet

    def collect(self):
        with self._lock:
            if self._at is None or time.monotonic() - self._at >= CACHE_SECONDS:
                self._families = self._read()
                self._at = time.monotonic()
            return list(self._families)

    def _read(self):
        with self.db.read() as s:
            names = dict(s.execute(select(Batch.id, Batch.name)).all())
            counts = task_store.batch_counts(s)
            tasks = GaugeMetricFamily("scitq_tasks", "Tasks by batch and status",
                                      labels=["batch", "status"])
            for bid, c in counts.items():
                for status in TaskStatus:
                    tasks.add_metric([names.get(bid, str(bid)), status.value], c[status.value])
            summary = dash.workers_summary(s, counts)
            workers = GaugeMetricFamily("scitq_workers", "Workers by status", labels=["status"])
            for status, n in summary["by_status"].items():
                workers.add_metric([status], n)
            slots = GaugeMetricFamily("scitq_slots", "Task slots of the workers alive, busy "
                                      "(assigned or running) or free", labels=["state"])
            slots.add_metric(["busy"], summary["busy"])
            slots.add_metric(["free"], max(summary["slots"] - summary["busy"], 0))
            hosts = GaugeMetricFamily("scitq_instances", "Rented hosts by status",
                                      labels=["status"])
            for status, n in s.execute(select(Instance.status, func.count())
                                       .group_by(Instance.status)):
                hosts.add_metric([status], n)
            cost = dash.total_cost(cost_of(s, batch_ids=list(names), now=utcnow()))
            spent = GaugeMetricFamily("scitq_cost_spent", "What the rented hosts cost so far "
                                      "(the providers' currency)")
            spent.add_metric([], cost["spent"])
            hourly = GaugeMetricFamily("scitq_cost_hourly", "What the live rented hosts cost "
                                       "per hour now")
            hourly.add_metric([], cost["hourly"])
            jobs = GaugeMetricFamily("scitq_jobs", "Jobs by kind and status",
                                     labels=["kind", "status"])
            for kind, status, n in s.execute(select(Job.kind, Job.status, func.count())
                                             .group_by(Job.kind, Job.status)):
                jobs.add_metric([kind, status], n)
        return [tasks, workers, slots, hosts, spent, hourly, jobs]


def create_blueprint():
    """/metrics (a token when the server says so), /healthz (this process answers) and
    /readyz (its database answers too)."""
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    @access("user", when="metrics_auth")
    def metrics():
        state = current_app.extensions["scitq"]
        return Response(state.metrics.exposition(), content_type=CONTENT_TYPE)

    @bp.get("/healthz")
    @access("public")
    def healthz():
        return jsonify(status="ok")

    @bp.get("/readyz")
    @access("public")
    def readyz():
        state = current_app.extensions["scitq"]
        try:
            with state.db.read() as s:
                s.execute(text("SELECT 1"))
        except Exception as exc:     # any failure to reach the database: not ready
            return jsonify(status="unavailable", error=str(exc).splitlines()[0][:300]), 503
        return jsonify(status="ok")

    return bp
