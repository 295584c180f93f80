"""A background loop of the server: one thread, woken early by `wake()`, else every `tick`."""
import logging
import threading

log = logging.getLogger(__name__)


class Loop:
    """Subclasses set `name` and `tick` and implement `step()`; an error in a step is logged
    and the loop goes on at the next tick (a database restart must not kill the despot)."""

    name = "loop"
    tick = 1.0          # seconds between steps when nothing wakes the loop

    def __init__(self):
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def wake(self):
        self._wake.set()

    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"scitq-{self.name}", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)

    def step(self):
        raise NotImplementedError

    def _run(self):
        log.info("%s started", self.name)
        while not self._stop.is_set():
            self._wake.wait(self.tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.step()
            except Exception:
                log.exception("%s step failed; trying again at the next tick", self.name)
                self._stop.wait(self.tick)
        log.info("%s stopped", self.name)
