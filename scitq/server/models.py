"""The tables: what scitq remembers. Statuses are the string enums of scitq.status."""
from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer,
                        String, Text, TypeDecorator, UniqueConstraint, func, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from scitq.status import BatchStatus, ExecutionStatus, HostStatus, TaskStatus, WorkerStatus

MAX_ID = 2 ** 63 - 1      # what an id column holds; larger numbers name nothing
MAX_INT = 2 ** 31 - 1     # what an Integer column holds (pid, return code, cpus)

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
Id = BigInteger().with_variant(Integer, "sqlite")


def utcnow():
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        # In UTC: SQLite keeps no offset, so another zone's time would be read back as UTC.
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def iso(dt):
    return dt.isoformat() if dt is not None else None


class Base(DeclarativeBase):
    pass


class Batch(Base):
    __tablename__ = "batch"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.ACTIVE.value)
    # At most this many of its tasks assigned or running at once, over all workers (None: no cap).
    concurrency: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self):
        return {"id": self.id, "name": self.name, "status": self.status,
                "concurrency": self.concurrency, "created_at": iso(self.created_at)}


class Task(Base):
    __tablename__ = "task"
    __table_args__ = (
        Index("ix_task_status_id", "status", "id"),          # pages of tasks by status
        # a batch's tasks of a status, in id order, whatever other batches hold
        Index("ix_task_batch_status_id", "batch_id", "status", "id"),
        # dispatch: oldest pending first. Only pending tasks are in it, so PostgreSQL takes it
        # for claims whatever its statistics say, and never walks the tasks already done.
        Index("ix_task_pending", "id", postgresql_where=text("status = 'pending'"),
              sqlite_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batch.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(255))
    command: Mapped[str] = mapped_column(Text)
    shell: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.PENDING.value)
    reason: Mapped[str | None] = mapped_column(String(1024))   # why it failed or was canceled
    attempt: Mapped[int] = mapped_column(Integer, default=0)   # executions started so far
    retries: Mapped[int] = mapped_column(Integer, default=0)   # attempts allowed after the first
    retry_delay: Mapped[float] = mapped_column(default=0.0)    # seconds before a retry
    retry_backoff: Mapped[float] = mapped_column(default=1.0)  # delay factor per further retry
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)   # a retry waits till then
    timeout: Mapped[float | None]                              # seconds the command may run
    staging_timeout: Mapped[float | None]                      # seconds its downloads may take
    container: Mapped[str | None] = mapped_column(String(512))
    container_options: Mapped[str | None] = mapped_column(Text)
    inputs: Mapped[list | None] = mapped_column(JSON)          # URIs, downloaded into $INPUT
    resources: Mapped[list | None] = mapped_column(JSON)       # URIs, cached per worker, read-only
    output: Mapped[str | None] = mapped_column(String(4096))   # URI that receives $OUTPUT
    use_cache: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    batch: Mapped[Batch] = relationship(lazy="joined", innerjoin=True)

    def to_dict(self):
        return {"id": self.id, "batch": self.batch.name, "batch_id": self.batch_id,
                "name": self.name, "command": self.command, "shell": self.shell,
                "status": self.status, "reason": self.reason, "attempt": self.attempt,
                "retries": self.retries, "retry_delay": self.retry_delay,
                "retry_backoff": self.retry_backoff, "not_before": iso(self.not_before),
                "timeout": self.timeout, "staging_timeout": self.staging_timeout,
                "container": self.container, "container_options": self.container_options,
                "inputs": self.inputs or [], "resources": self.resources or [],
                "output": self.output, "use_cache": self.use_cache,
                "created_at": iso(self.created_at), "updated_at": iso(self.updated_at)}


class TaskCount(Base):
    """Tasks per (batch, status), kept by triggers on task (migration task_counts) in the
    transaction of every insert, status change and delete, whoever writes it. A batch's
    count is the sum of its rows: on PostgreSQL each statement adds rows of differences (no
    row is updated, so concurrent writers never wait on each other) and
    scitq.server.task_store.compact_counts folds them; on SQLite (one writer) a row per key."""

    __tablename__ = "task_count"
    __table_args__ = (Index("ix_task_count_batch_status", "batch_id", "status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    batch_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(BigInteger)


class TaskDependency(Base):
    """An edge of the task DAG: task_id waits for depends_on_id."""

    __tablename__ = "task_dependency"

    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"),
                                               primary_key=True, index=True)


class Submission(Base):
    """A chunk of tasks sent under a client's submission id (`Client.add_tasks`), written in the
    transaction of its tasks: the same chunk sent again gets these ids back and stores nothing."""

    __tablename__ = "submission"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)   # e.g. "<uuid>:<chunk>"
    digest: Mapped[str] = mapped_column(String(64))     # sha256 of the chunk (tasks and batch)
    first_id: Mapped[int] = mapped_column(Id)
    last_id: Mapped[int] = mapped_column(Id)
    count: Mapped[int] = mapped_column(Integer)
    ids: Mapped[list | None] = mapped_column(JSON)      # only when they are not first..last
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def task_ids(self):
        return self.ids if self.ids is not None else list(range(self.first_id, self.last_id + 1))


def ahead(worker):
    """How many tasks a worker (a row or a Worker) holds beyond its concurrency: its pinned
    prefetch, else the depth it asked for."""
    return worker.prefetch if worker.prefetch is not None else worker.depth     # AHEAD in SQL


class Worker(Base):
    __tablename__ = "worker"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    hostname: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=WorkerStatus.RUNNING.value)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    # Tasks it holds beyond its concurrency: a number set by a user, or None (the default):
    # the worker sizes its queue from its tasks' durations and round trips, and says how deep
    # it wants it (`depth`) in its calls.
    prefetch: Mapped[int | None] = mapped_column(Integer, default=None)
    depth: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When set, the worker only takes tasks of this batch.
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batch.id", ondelete="SET NULL"))
    cpus: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[str | None] = mapped_column(String(32))
    load: Mapped[float | None]
    memory: Mapped[float | None]   # percent used
    disk: Mapped[float | None]     # percent used of the worker's work dir
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Since when it has run nothing (None while it runs something): recruitment tears down
    # hosts idle for longer than their recruiter's idle_timeout.
    idle_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Settings the server gave it ({name: value}: concurrency, prefetch, batch, status): a
    # process that registers again under its name keeps them rather than its own flags.
    set_on_server: Mapped[dict | None] = mapped_column(JSON)

    batch: Mapped[Batch | None] = relationship(lazy="joined")

    def to_dict(self, running=None):
        return {"id": self.id, "name": self.name, "hostname": self.hostname,
                "status": self.status, "concurrency": self.concurrency,
                "prefetch": self.prefetch, "depth": ahead(self),
                "batch": self.batch.name if self.batch else None, "cpus": self.cpus, "version": self.version, "load": self.load,
                "memory": self.memory, "disk": self.disk, "running": running,
                "last_seen": iso(self.last_seen), "idle_since": iso(self.idle_since),
                "created_at": iso(self.created_at), "set_on_server": self.set_on_server or {}}


# ahead() in SQL, for the statements that pick the workers with room (dispatch.PASS_WORKERS).
AHEAD = func.coalesce(Worker.__table__.c.prefetch, Worker.__table__.c.depth)


class Execution(Base):
    """One attempt of a task on a worker. Its output lives in files, not here."""

    __tablename__ = "execution"
    __table_args__ = (Index("ix_execution_worker_status", "worker_id", "status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("worker.id", ondelete="SET NULL"))
    worker_name: Mapped[str | None] = mapped_column(String(128))   # kept when the worker is deleted
    status: Mapped[str] = mapped_column(String(16), default=ExecutionStatus.ASSIGNED.value)
    pid: Mapped[int | None] = mapped_column(Integer)
    return_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(32))   # short cause of failure: timeout, killed...
    error: Mapped[str | None] = mapped_column(String(1024))
    # A signal the user asked for (kill, pause, resume, requeue), until the worker says it
    # applied it; signal_seq tells a new request from one already applied.
    signal: Mapped[str | None] = mapped_column(String(16))
    signal_seq: Mapped[int] = mapped_column(Integer, default=0)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    cache_key: Mapped[str | None] = mapped_column(String(64), index=True)
    cached_from: Mapped[int | None] = mapped_column(Id)      # the execution whose result it reused
    stdout_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    stderr_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Indexed for the rollups (scitq.server.rollups), which read the executions that ended lately.
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)

    task: Mapped[Task] = relationship()

    def to_dict(self):
        return {"id": self.id, "task_id": self.task_id, "worker_id": self.worker_id,
                "worker": self.worker_name, "status": self.status, "pid": self.pid,
                "return_code": self.return_code, "reason": self.reason, "error": self.error,
                "paused": self.paused, "cached_from": self.cached_from,
                "stdout_bytes": self.stdout_bytes, "stderr_bytes": self.stderr_bytes,
                "assigned_at": iso(self.assigned_at), "started_at": iso(self.started_at),
                "ended_at": iso(self.ended_at)}


class MinuteRollup(Base):
    """Per minute, per batch and per worker: tasks ended (succeeded, failed), and samples of
    busy and free slots and of cost, for the UI's charts (scitq.server.rollups). Batch 0 is
    every batch and worker 0 every worker; -1 is a worker deleted since."""

    __tablename__ = "minute_rollup"
    __table_args__ = (Index("ix_minute_rollup_worker", "worker_id"),)

    batch_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    worker_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    busy: Mapped[int | None] = mapped_column(Integer)     # slots busy (assigned or running)
    slots: Mapped[int | None] = mapped_column(Integer)    # slots of the workers alive (batch 0)
    cost: Mapped[float | None]                            # spent so far


class Flavor(Base):
    """The flavor catalog: what each provider rents, refreshed from its API."""

    __tablename__ = "flavor"
    __table_args__ = (UniqueConstraint("provider", "region", "name", "spot"),
                      Index("ix_flavor_search", "cpu", "ram"))

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    cpu: Mapped[int] = mapped_column(Integer)
    ram: Mapped[float]                                      # GiB
    disk: Mapped[float]                                     # GiB
    gpu: Mapped[int] = mapped_column(Integer, default=0)
    gpu_model: Mapped[str | None] = mapped_column(String(64))
    hourly_cost: Mapped[float | None]
    spot: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def to_dict(self):
        return {"provider": self.provider, "region": self.region, "name": self.name,
                "cpu": self.cpu, "ram": self.ram, "disk": self.disk, "gpu": self.gpu,
                "gpu_model": self.gpu_model, "hourly_cost": self.hourly_cost, "spot": self.spot,
                "updated_at": iso(self.updated_at)}


class Job(Base):
    """A background action on a host (deploy, teardown), retried by policy. Its log is a
    file under the data dir, read by offset like task output."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_status_next", "status", "next_try_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))              # deploy / teardown
    target: Mapped[str] = mapped_column(String(255))           # the host
    status: Mapped[str] = mapped_column(String(16), default="pending")
    params: Mapped[dict] = mapped_column(JSON, default=dict)   # engine, user, port, worker settings
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # Attempts made before the last `job retry` (which starts a fresh set): the job's history.
    earlier_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_try_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_dict(self):
        return {"id": self.id, "kind": self.kind, "target": self.target, "status": self.status,
                "params": self.params, "attempts": self.attempts,
                "max_attempts": self.max_attempts, "earlier_attempts": self.earlier_attempts,
                "error": self.error,
                "created_at": iso(self.created_at), "next_try_at": iso(self.next_try_at),
                "started_at": iso(self.started_at), "ended_at": iso(self.ended_at)}


def accrued(hourly_cost, created_at, end):
    """What a host rented at hourly_cost from created_at costs until end: the one cost
    formula, so that a recruiter's or a batch's total is the sum of its hosts'."""
    return hourly_cost * max((end - created_at).total_seconds(), 0) / 3600


class Recruiter(Base):
    """A rule that rents hosts for a batch: which, how many, at what cost, for how long idle."""

    __tablename__ = "recruiter"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batch.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    regions: Mapped[list | None] = mapped_column(JSON)         # None: every region of the provider
    flavor: Mapped[str | None] = mapped_column(String(128))    # a name, or the minimums below
    min_cpu: Mapped[int | None] = mapped_column(Integer)
    min_ram: Mapped[float | None]                              # GiB
    min_disk: Mapped[float | None]                             # GiB
    gpu: Mapped[bool] = mapped_column(Boolean, default=False)
    spot: Mapped[bool] = mapped_column(Boolean, default=False)
    max_workers: Mapped[int] = mapped_column(Integer)
    tasks_per_worker: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    prefetch: Mapped[int | None] = mapped_column(Integer, default=None)   # None: the workers size it
    idle_timeout: Mapped[float] = mapped_column(default=300.0)     # seconds
    # Seconds a host may take from its order to its worker's registration; None: the server's.
    deploy_timeout: Mapped[int | None] = mapped_column(Integer)
    max_hourly_cost: Mapped[float | None]
    budget: Mapped[float | None]
    rank: Mapped[int] = mapped_column(Integer, default=0)          # lower ranks recruit first
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    batch: Mapped[Batch] = relationship(lazy="joined", innerjoin=True)

    def to_dict(self):
        return {"id": self.id, "batch": self.batch.name, "batch_id": self.batch_id,
                "provider": self.provider, "regions": self.regions, "flavor": self.flavor,
                "min_cpu": self.min_cpu, "min_ram": self.min_ram, "min_disk": self.min_disk,
                "gpu": self.gpu, "spot": self.spot, "max_workers": self.max_workers,
                "tasks_per_worker": self.tasks_per_worker, "concurrency": self.concurrency,
                "prefetch": self.prefetch, "idle_timeout": self.idle_timeout,
                "deploy_timeout": self.deploy_timeout,
                "max_hourly_cost": self.max_hourly_cost, "budget": self.budget, "rank": self.rank,
                "created_at": iso(self.created_at)}


class Instance(Base):
    """A host scitq rented: what it costs, whom it serves, and its worker (same name)."""

    __tablename__ = "instance"
    __table_args__ = (Index("ix_instance_status", "status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)    # also its worker's name
    recruiter_id: Mapped[int | None] = mapped_column(ForeignKey("recruiter.id", ondelete="SET NULL"),
                                                     index=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batch.id", ondelete="SET NULL"),
                                                 index=True)
    provider: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(64))
    flavor: Mapped[str] = mapped_column(String(128))
    spot: Mapped[bool] = mapped_column(Boolean, default=False)
    hourly_cost: Mapped[float | None]
    provider_id: Mapped[str | None] = mapped_column(String(255))
    ip: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=HostStatus.CREATING.value)
    error: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cost: Mapped[float | None]        # closed at deletion: hourly_cost x lifetime

    def cost_so_far(self, now=None):
        if self.cost is not None or self.hourly_cost is None:
            return self.cost or 0.0
        return accrued(self.hourly_cost, self.created_at, self.deleted_at or now or utcnow())

    def to_dict(self, now=None):
        return {"id": self.id, "name": self.name, "recruiter_id": self.recruiter_id,
                "batch_id": self.batch_id, "provider": self.provider, "region": self.region,
                "flavor": self.flavor, "spot": self.spot, "hourly_cost": self.hourly_cost,
                "provider_id": self.provider_id, "ip": self.ip, "status": self.status,
                "error": self.error, "created_at": iso(self.created_at),
                "deleted_at": iso(self.deleted_at), "cost": round(self.cost_so_far(now), 6)}


class Token(Base):
    """An API token. Only its sha256 is kept: the token itself is shown once, at creation."""

    __tablename__ = "token"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))       # its first characters, to tell it apart
    # A worker token reaches one worker: the first it registers (or the one named here).
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("worker.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_dict(self):
        return {"id": self.id, "name": self.name, "role": self.role, "prefix": self.prefix,
                "worker_id": self.worker_id, "created_at": iso(self.created_at),
                "revoked_at": iso(self.revoked_at)}


class UiSession(Base):
    """A login to the web UI: the browser holds a random id (only its sha256 is kept here), the
    token it was exchanged for stays on the server; logout or the token's revocation ends it."""

    __tablename__ = "ui_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("token.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """Append-only audit: one row per state change, written in the change's transaction."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))        # e.g. "task.created", "execution.failed"
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[int | None] = mapped_column(Id)
    detail: Mapped[dict | None] = mapped_column(JSON)

    def to_dict(self):
        return {"id": self.id, "at": iso(self.at), "kind": self.kind,
                "object_type": self.object_type, "object_id": self.object_id,
                "detail": self.detail}
