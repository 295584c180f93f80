"""What the owner's modules share: the tables, the statuses they name, and the session's view."""
from sqlalchemy import bindparam

from scitq.server.models import Execution, Task
from scitq.status import ExecutionStatus

SIGNALS = ("kill", "pause", "resume")
ACTIVE = (ExecutionStatus.ASSIGNED.value, ExecutionStatus.RUNNING.value)
DEPENDENCY = "dependency "     # how the reason of a task canceled by its DAG begins
TASK, EXECUTION = Task.__table__, Execution.__table__
IDS = bindparam("ids", expanding=True)
NOW = bindparam("now")


def expire_held(s, model, ids):
    """What the session holds of these rows is stale once a Core statement changed them."""
    for obj in list(s.identity_map.values()):
        if isinstance(obj, model) and obj.id in ids:
            s.expire(obj)
