"""`static`: a lab's own SSH hosts, listed in YAML. Recruited and released, never created
nor deleted: create() takes a free host that fits, delete() gives it back.

    static:
      hosts:
        - name: lab1
          address: 192.0.2.10        # what scitq ssh-es to
          user: root
          region: lab                # default "static"
          flavor: big                # default "static-<cpu>c"
          cpu: 32
          ram: 128                   # GiB
          disk: 2000                 # GiB
          gpu: 0
      state: /var/lib/scitq/static.json   # which hosts are recruited (default: beside the data dir)
"""
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from scitq.errors import BadRequest, CapacityError, InstanceNotFound
from scitq.providers.base import TAG, carries, Flavor, Instance, InstanceStatus, Provider, Quota


class StaticProvider(Provider):
    name = "static"
    rents_hosts = False

    def __init__(self, config=None):
        super().__init__(config)
        hosts = self.config.get("hosts")
        if hosts is None and self.config.get("file"):
            import yaml
            hosts = (yaml.safe_load(Path(self.config["file"]).read_text()) or {}).get("hosts")
        self.hosts = {}
        for i, h in enumerate(hosts or []):
            if not isinstance(h, dict) or not h.get("name") or not h.get("address"):
                raise BadRequest(f"static host #{i}: 'name' and 'address' are required")
            cpu = int(h.get("cpu", 1))
            self.hosts[h["name"]] = dict(h, cpu=cpu, ram=float(h.get("ram", 1)),
                                         disk=float(h.get("disk", 10)), gpu=int(h.get("gpu", 0)),
                                         region=h.get("region", "static"),
                                         flavor=h.get("flavor", f"static-{cpu}c"),
                                         user=h.get("user", "root"))
        self.state_path = Path(self.config.get("state") or
                               Path(self.config.get("data_dir", ".")) / "static-hosts.json")

    def check(self):
        if not self.hosts:
            raise BadRequest("static: no host listed (give 'hosts' or 'file' in its configuration)")

    @contextmanager
    def _state(self):
        """The recruited hosts {name: {spec name, tags}}, read and written under a lock."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read()
            state = json.loads(text) if text.strip() else {}
            yield state
            f.seek(0)
            f.truncate()
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())

    def regions(self):
        return sorted({h["region"] for h in self.hosts.values()})

    def flavors(self, region=None):
        seen = {}
        for h in self.hosts.values():
            if region is None or h["region"] == region:
                seen[(h["region"], h["flavor"])] = Flavor(
                    provider=self.name, region=h["region"], name=h["flavor"], cpu=h["cpu"],
                    ram=h["ram"], disk=h["disk"], gpu=h["gpu"], hourly_cost=float(h.get("cost", 0)))
        return list(seen.values())

    def quotas(self, region):
        with self._state() as state:
            hosts = [n for n, h in self.hosts.items() if h["region"] == region]
            return [Quota(region=region, resource="instances",
                          used=sum(1 for n in hosts if n in state), limit=len(hosts))]

    def _instance(self, name, rec):
        h = self.hosts[name]
        return Instance(provider=self.name, id=name, name=rec["name"], region=h["region"],
                        flavor=h["flavor"], status=InstanceStatus.RUNNING, ip=h["address"],
                        user=h["user"], tags=rec["tags"])

    def create(self, spec):
        with self._state() as state:
            for name, h in self.hosts.items():
                if name not in state and h["flavor"] == spec.flavor and h["region"] == spec.region:
                    state[name] = {"name": spec.name, "tags": {**spec.tags, TAG: spec.name}}
                    return self._instance(name, state[name])
        raise CapacityError(f"static: no free host of flavor {spec.flavor} in {spec.region}")

    def get(self, instance_id):
        if instance_id not in self.hosts:
            raise InstanceNotFound(f"static: no host {instance_id!r}")
        with self._state() as state:
            if instance_id not in state:
                h = self.hosts[instance_id]
                return Instance(provider=self.name, id=instance_id, name=instance_id,
                                region=h["region"], flavor=h["flavor"],
                                status=InstanceStatus.DELETED, ip=h["address"], user=h["user"])
            return self._instance(instance_id, state[instance_id])

    def list(self, tags=None):
        with self._state() as state:
            out = [self._instance(n, rec) for n, rec in state.items() if n in self.hosts]
        return [i for i in out if carries(i.tags, tags)]

    def delete(self, instance_id):
        """Release the host (it keeps running: it is not ours to delete)."""
        with self._state() as state:
            state.pop(instance_id, None)
