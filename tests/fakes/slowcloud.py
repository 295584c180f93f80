"""A slow cloud for real server processes: the `static` provider (a list of hosts, their
renting kept in a file several servers can share) whose regions(), flavors() and quotas()
take `delay` seconds, as a cloud's API may. Each call's start and end go to `calls`
(one JSON line each: {"call", "at": "start"|"end", "t": unix time}).

Run `python -m fakes.slowcloud server ...` (tests/ on PYTHONPATH): the scitq command with
this provider known as "slow", and deploys that only log (its hosts are names: the test
starts each host's worker, under the instance's name, as a deploy would).

    slow:
      delay: 5
      calls: /tmp/.../calls.jsonl
      state: /tmp/.../static.json      # shared by the servers of one database
      hosts: [{name: h1, address: h1.invalid, cpu: 2}, ...]
"""
if __name__ == "__main__":      # as the server command does, before anything is imported
    from gevent import monkey
    monkey.patch_all()

import json  # noqa: E402
import time  # noqa: E402

from scitq.providers import PROVIDERS  # noqa: E402
from scitq.providers.static import StaticProvider  # noqa: E402


class SlowProvider(StaticProvider):
    name = "slow"

    def _slow(self, call):
        path = self.config.get("calls")
        self._note(path, call, "start")
        time.sleep(float(self.config.get("delay", 0)))
        self._note(path, call, "end")

    @staticmethod
    def _note(path, call, at):
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"call": call, "at": at, "t": time.time()}) + "\n")

    def regions(self):
        self._slow("regions")
        return super().regions()

    def flavors(self, region=None):
        self._slow("flavors")
        return super().flavors(region)

    def quotas(self, region):
        self._slow("quotas")
        return super().quotas(region)


def calls(path):
    """[(call, start, end)] of the calls made so far (end None: under way)."""
    out, started = [], {}
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        rec = json.loads(line)
        if rec["at"] == "start":
            started.setdefault(rec["call"], []).append(len(out))
            out.append([rec["call"], rec["t"], None])
        else:
            out[started[rec["call"]].pop(0)][2] = rec["t"]
    return [tuple(c) for c in out]


def _deploy(self, job, log):
    log(f"{job['params']['name']}: its worker is started by the test")


if __name__ == "__main__":
    from scitq.server.deploys import Deployer
    PROVIDERS["slow"] = (__name__, "SlowProvider")
    Deployer.deploy = _deploy
    from scitq.cli import main
    main()
