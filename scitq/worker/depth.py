"""How many tasks a worker holds beyond those it runs, when no one pinned its prefetch.

A worker reports its ended tasks when its queue falls under half its depth, and the answer
brings the next ones: the queue must last as long as that round trip plus the report gap.
Its slots end tasks at concurrency / duration a second, so the depth it needs is twice
that rate times the round trip. Short tasks (a few ms) get a deep queue (up to MAX), tasks
of seconds get none, and stay spread over the fleet: a queued task waits on one worker
while another one may have a slot free. (The worker still keeps one queued while the server
has tasks left for every slot: Worker.depth.)
"""

MAX = 128          # deeper queues did not pay on the throughput bench (flat past 128)
ALPHA = 0.2        # weight of the newest measure in the running means
# The depths told: the server hears of a change only when it moves to another step.
STEPS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class Depth:
    def __init__(self):
        self.duration = None        # running mean of task durations, seconds
        self.round_trip = None      # running mean of report round trips, seconds

    def task_ended(self, seconds):
        self.duration = _mean(self.duration, max(seconds, 1e-4))

    def answered(self, seconds):
        self.round_trip = _mean(self.round_trip, max(seconds, 0.0))

    def wanted(self, concurrency, gap, running_for=0.0):
        """The depth for these measures: 0 until a task has ended. `running_for`: how long
        the oldest running task has run; tasks longer than the mean so far (a batch of long
        tasks after short ones) count at that length at least."""
        if self.duration is None:
            return 0
        duration = max(self.duration, running_for)
        need = 2 * concurrency / duration * ((self.round_trip or 0.0) + gap)
        return min((s for s in STEPS if s >= min(need, MAX) - 0.5), default=MAX)


def _mean(old, new):
    return new if old is None else old + ALPHA * (new - old)
