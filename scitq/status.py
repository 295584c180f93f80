"""The states of scitq's objects, shared by server, worker and client (no dependencies)."""
from enum import Enum


class TaskStatus(str, Enum):
    WAITING = "waiting"      # dependencies not met yet
    PENDING = "pending"      # ready, waiting for a worker
    ASSIGNED = "assigned"    # an execution was created for a worker
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"    # will not run (a dependency failed for good, or a user said so)

    @property
    def is_active(self):
        return self in (TaskStatus.ASSIGNED, TaskStatus.RUNNING)

    @property
    def is_finished(self):
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED)


REMAINING = (TaskStatus.WAITING, TaskStatus.PENDING, TaskStatus.ASSIGNED, TaskStatus.RUNNING)


class ExecutionStatus(str, Enum):
    ASSIGNED = "assigned"    # handed to a worker, not started yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"            # its worker went silent or was deleted; the task was given back
    RELEASED = "released"    # a draining worker gave it back before starting it

    @property
    def is_active(self):
        return self in (ExecutionStatus.ASSIGNED, ExecutionStatus.RUNNING)


class WorkerStatus(str, Enum):
    RUNNING = "running"      # takes tasks
    PAUSED = "paused"        # keeps its running tasks, takes nothing new
    DRAINING = "draining"    # finishes its running tasks, then exits
    OFFLINE = "offline"      # exited cleanly
    LOST = "lost"            # silent for longer than its lease

    @property
    def takes_tasks(self):
        return self is WorkerStatus.RUNNING


class JobStatus(str, Enum):
    PENDING = "pending"      # waiting for its (next) attempt
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"        # every attempt failed


class BatchStatus(str, Enum):
    ACTIVE = "active"
    PAUSED = "paused"        # its pending tasks are held out of dispatch
    DONE = "done"            # shown, never stored: active, with tasks, every one of them ended

    @classmethod
    def shown(cls, stored, counts):
        """What a batch is said to be: its stored status, or `done` when it is active and
        all its tasks have ended (a task added makes it active again: nothing to undo)."""
        if stored == cls.ACTIVE.value and counts["total"] and not counts["remaining"]:
            return cls.DONE.value
        return stored


class HostStatus(str, Enum):
    """A rented host as the server remembers it (an `instance` row), from the order to rent
    it to its deletion. (The cloud's own view is scitq.providers.base.InstanceStatus.)"""
    CREATING = "creating"    # asked of the provider
    DEPLOYING = "deploying"  # up; its worker is being installed, or has not registered yet
    RUNNING = "running"      # its worker registered
    DELETING = "deleting"    # its deletion is under way
    DELETED = "deleted"      # gone; its cost is closed
    FAILED = "failed"        # the provider never gave it (nothing to pay, nothing to delete)

    @property
    def is_live(self):
        """Counted as a worker of its recruiter (and paid for)."""
        return self in (HostStatus.CREATING, HostStatus.DEPLOYING, HostStatus.RUNNING)


LIVE_HOSTS = tuple(s.value for s in HostStatus if s.is_live)


class Role(str, Enum):
    ADMIN = "admin"      # everything, tokens included
    USER = "user"        # tasks, batches, workers, recruiters: all but tokens, providers, deploys
    WORKER = "worker"    # one worker's own registration, polls, reports and executions
