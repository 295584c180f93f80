"""The one owner of task and execution state: how a task moves on once something happened
to it (a report, a lost worker, a user's kill, stop, force or relaunch), the dependency DAG,
signals. Every change is decided on plain rows and written set-based in the caller's
transaction (one statement per target status, events by one insert); nothing commits.
The lifecycle: waiting -> pending -> assigned -> running -> succeeded | failed, with
canceled for tasks whose dependency failed for good (or that a user killed before they ran).
Assignment (pending -> assigned) is the dispatcher's claim, in dispatch.py.
"""
from scitq.server.lifecycle.common import ACTIVE, DEPENDENCY, SIGNALS
from scitq.server.lifecycle.dag import (
    cancel_dependents,
    revive_dependents,
    set_dependencies,
    settle,
    would_cycle,
)
from scitq.server.lifecycle.executions import Reports
from scitq.server.lifecycle.moves import ATTEMPT_FIELDS, Moves, cancel, force, give_back, relaunch
from scitq.server.lifecycle.signals import signal_batch, signal_task, stop_batch

__all__ = ["ACTIVE", "ATTEMPT_FIELDS", "DEPENDENCY", "SIGNALS", "Moves", "Reports", "cancel",
           "cancel_dependents", "force", "give_back", "relaunch",
           "revive_dependents", "set_dependencies", "settle", "signal_batch", "signal_task",
           "stop_batch", "would_cycle"]
