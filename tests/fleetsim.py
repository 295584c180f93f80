"""Many real scitq workers in one process, whose tasks are simulated: the fleet of a bench or
a test, speaking the real protocol to a real server.

    python tests/fleetsim.py URL NAMES_FILE CONCURRENCY WORKDIR

NAMES_FILE holds a JSON list of [name, token or null]. Each worker is scitq's own `Worker`
(registration, long polls, reports, its sized prefetch, drain on SIGTERM); only an
execution is simulated: it sleeps for its command's `sleep N` (0 for any other command)
instead of forking a process. At exit it prints {"retries": n, "refused": m}: the calls a
worker had to retry and the errors it logged, m of them the server's 503 refusals.
"""
import asyncio
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

SLEEP = re.compile(r"^sleep ([0-9.]+)$")


class SleepExecution:
    """An execution whose process is simulated: it sleeps for the task's `sleep N`."""

    def __init__(self, assignment, link, report, *_args):
        self.a, self.id, self.report = assignment, assignment["execution_id"], report
        self.killed = None
        self._sleep = None

    def stage(self):
        return None

    def discard(self):
        pass

    async def run(self):
        m = SLEEP.match(self.a["command"].strip())
        self.report({"execution_id": self.id, "status": "running", "pid": os.getpid()})
        self._sleep = asyncio.ensure_future(asyncio.sleep(float(m.group(1)) if m else 0))
        try:
            await self._sleep
            self.report({"execution_id": self.id, "status": "succeeded", "return_code": 0})
        except asyncio.CancelledError:
            if self.killed is None:
                raise
            self.report({"execution_id": self.id, "status": "failed", "reason": "killed",
                         "error": "killed on request"})

    def kill(self, reason="killed"):
        self.killed = reason
        if self._sleep is not None:
            self._sleep.cancel()

    def pause(self):
        pass

    def resume(self):
        pass


class Count(logging.Handler):
    """Counts the calls workers had to retry and their errors, the server's clean refusals
    (HTTP 503, retried after its Retry-After) apart; shows the first few of each."""

    def __init__(self):
        super().__init__()
        self.n = self.refused = 0

    def emit(self, record):
        message = record.getMessage()
        if "retrying" in message or record.levelno >= logging.ERROR:
            self.n += 1
            self.refused += "(HTTP 503)" in message
            if self.n <= 5 or ("(HTTP 503)" not in message and self.n - self.refused <= 5):
                sys.stderr.write(f"fleetsim: {message[:300]}\n")


def main(url, names_file, concurrency, workdir):
    from scitq.worker import worker as worker_module
    worker_module.Execution = SleepExecution
    counter = Count()
    logger = logging.getLogger("scitq.worker")
    logger.addHandler(counter)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    pairs = json.loads(Path(names_file).read_text())

    async def fleet():
        loop = asyncio.get_running_loop()
        workers = [worker_module.Worker(url, name=name, concurrency=concurrency, token=token,
                                        workdir=workdir) for name, token in pairs]
        runs = []
        for w in workers:           # registrations spread over a few seconds, as hosts boot
            runs.append(asyncio.create_task(w.run()))
            await asyncio.sleep(0.02)
        def stop():
            # The counts so far first: a fleet too big to drain in time is killed, and its
            # counts are still read.
            print(json.dumps({"retries": counter.n, "refused": counter.refused}), flush=True)
            for w in workers:
                w.drain("SIGTERM")
        for sig in (signal.SIGTERM, signal.SIGINT):     # one drain for all (each run set its own)
            loop.add_signal_handler(sig, stop)
        await asyncio.gather(*runs)

    asyncio.run(fleet())
    print(json.dumps({"retries": counter.n, "refused": counter.refused}), flush=True)


if __name__ == "__main__":
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))      # two connections a worker
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
