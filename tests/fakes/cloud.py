"""A cloud in memory, for recruitment simulations: instant hosts, priced flavors, an instance
quota per region, regions that refuse with a chosen error, and spot evictions on demand.
It implements the same Provider interface as ovh, azure and local."""
import itertools
import threading

from scitq.errors import InstanceNotFound
from scitq.providers.base import TAG, carries, Flavor, Instance, InstanceStatus, Provider, Quota
from scitq.server.providers import Providers


class FakeCloud(Provider):
    def __init__(self, name="fake", regions=("r1", "r2"), flavors=None, quota=None):
        super().__init__({})
        self.name = name
        self._regions = list(regions)
        self._flavors = flavors or [("small", 2, 4, 20, 0.10), ("big", 8, 32, 100, 0.40)]
        self.quota = dict(quota or {})          # region -> instances allowed
        self.refuse = {}                        # region -> an exception to raise on create
        self.hosts = {}                         # id -> Instance
        self.created = []                       # ids, in order (history)
        self.deleted = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def regions(self):
        return list(self._regions)

    def flavors(self, region=None):
        return [Flavor(self.name, r, n, cpu, ram, disk, hourly_cost=price)
                for r in ([region] if region else self._regions)
                for n, cpu, ram, disk, price in self._flavors]

    def quotas(self, region):
        used = sum(1 for h in self.hosts.values() if h.region == region)
        return [Quota(region, "instances", used, self.quota.get(region))]

    def create(self, spec):
        with self._lock:
            if spec.region in self.refuse:
                raise self.refuse[spec.region]
            n = next(self._ids)
            host = Instance(self.name, f"{spec.region}/{n}", spec.name, spec.region, spec.flavor,
                            InstanceStatus.RUNNING, ip=f"198.51.100.{n % 250 + 1}", user="root",
                            tags={**spec.tags, TAG: spec.name})
            self.hosts[host.id] = host
            self.created.append(host.id)
            return host

    def get(self, instance_id):
        try:
            return self.hosts[instance_id]
        except KeyError:
            raise InstanceNotFound(f"no host {instance_id}") from None

    def list(self, tags=None):
        return [h for h in list(self.hosts.values()) if carries(h.tags, tags)]

    def delete(self, instance_id):
        with self._lock:
            if self.hosts.pop(instance_id, None) is not None:
                self.deleted.append(instance_id)

    def evict(self, instance_id):
        """The cloud takes a spot host back."""
        with self._lock:
            self.hosts.pop(instance_id)


class FakeProviders(Providers):
    """The server's Providers, with fake clouds in place of configured ones."""

    def __init__(self, clouds, data_dir):
        super().__init__({name: {} for name in clouds}, data_dir)
        self.clouds = clouds

    def get(self, name):
        return self.clouds[name]
