"""The server's providers: their configuration, the flavor catalog, and their instances.

Configuration is a YAML mapping {provider name: its settings} (see each provider module),
from --providers FILE, SCITQ_PROVIDERS, or DATA_DIR/providers.yaml.
"""
import re
import secrets
import threading
from pathlib import Path

from sqlalchemy import delete, select

from scitq.errors import BadRequest, ProviderError, ScitqError
from scitq.providers import PROVIDERS, InstanceSpec, get_provider
from scitq.providers.base import check_max_price
from scitq.server.models import Flavor, Instance, utcnow
from scitq.status import HostStatus
from scitq.server.sshkey import ensure_keypair


# Flavor and region names as clouds spell them (b2-7, GRA11, Standard_D2s_v3, eastus,
# static-8c): never an option (no leading -), a path (no /) or shell syntax. Matched whole.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+@:=-]{0,127}")


def check_name(what, value, limit=128):
    """A flavor or region name, or BadRequest."""
    if not isinstance(value, str) or len(value) > limit or not NAME.fullmatch(value):
        raise BadRequest(f"invalid {what} name {str(value)[:80]!r}: up to {limit} letters, digits "
                         "and _.+@:=- (starting with a letter or digit)")
    return value


def load_config(path):
    if not path or not Path(path).exists():
        return {}
    import yaml
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadRequest(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(config, dict) or not all(isinstance(v, dict) or v is None for v in config.values()):
        raise BadRequest(f"{path}: expected a mapping of provider name to its settings")
    unknown = set(config) - set(PROVIDERS)
    if unknown:
        raise BadRequest(f"{path}: unknown provider(s) {', '.join(sorted(unknown))}")
    return {k: v or {} for k, v in config.items()}


class Providers:
    """The providers this server may use, made on first use and kept."""

    def __init__(self, config, data_dir):
        self.config = config
        self.data_dir = Path(data_dir)
        self._made = {}
        self._lock = threading.Lock()

    def get(self, name):
        if name not in PROVIDERS:
            raise BadRequest(f"unknown provider {name!r}: one of {', '.join(sorted(PROVIDERS))}")
        if name not in self.config:
            raise BadRequest(f"provider {name} is not configured on this server "
                             f"(add a '{name}:' section to its providers file)")
        with self._lock:
            if name not in self._made:
                settings = {"data_dir": str(self.data_dir / "providers" / name), **self.config[name]}
                self._made[name] = get_provider(name, settings)
            return self._made[name]

    def status(self):
        """Every known provider: configured here or not, and usable or why not."""
        out = []
        for name in sorted(PROVIDERS):
            entry = {"name": name, "configured": name in self.config, "error": None}
            if entry["configured"]:
                try:
                    self.get(name).check()
                except ScitqError as err:
                    entry["error"] = err.message
            out.append(entry)
        return out

    def catalog(self, name, regions=None):
        """(regions, flavors) a provider rents now, as its API says; nothing is stored."""
        provider = self.get(name)
        provider.check()
        regions = regions or provider.regions()
        flavors = {(f.region, f.name, f.spot): f for region in regions for f in provider.flavors(region)}
        return regions, list(flavors.values())

    def refresh_catalog(self, db, name, regions=None):
        """Replace the catalog rows of a provider by what its API says now: asked outside any
        transaction (a cloud may take seconds), stored in a short one."""
        regions, flavors = self.catalog(name, regions)
        with db.write() as s:
            s.execute(delete(Flavor).where(Flavor.provider == name, Flavor.region.in_(regions)))
            now = utcnow()
            s.add_all(Flavor(**f.to_dict(), updated_at=now) for f in flavors)
        return len(flavors)

    def instances(self, s, name):
        """The provider's scitq-tagged instances, each shown deleting while the server is still
        deleting its host (the cloud may show it running, or show only what it left)."""
        listed = [i.to_dict() for i in self.get(name).list()]
        deleting = set(s.scalars(select(Instance.name).where(
            Instance.provider == name, Instance.status == HostStatus.DELETING.value,
            Instance.name.in_([i["name"] for i in listed])))) if listed else set()
        for i in listed:
            if i["name"] in deleting:
                i["status"] = HostStatus.DELETING.value
        return listed

    def create(self, name, flavor, region, count=1, spot=False, max_price=None):
        check_name("flavor", flavor)
        check_name("region", region, 64)
        check_max_price(max_price)
        provider = self.get(name)
        provider.check()
        _, public_key = ensure_keypair(self.data_dir)
        made = []
        for _ in range(count):
            spec = InstanceSpec(name=f"scitq-{name}-{secrets.token_hex(3)}", flavor=flavor,
                                region=region, ssh_public_key=public_key, spot=spot,
                                max_price=max_price)
            try:
                made.append(provider.create(spec))
            except ProviderError as err:
                if made:     # say what exists already: those hosts are real and cost money
                    err.detail = {"created": [i.to_dict() for i in made]}
                raise
        return made


def query_flavors(s, provider=None, region=None, min_cpu=None, min_ram=None, min_disk=None,
                  gpu=None, max_cost=None, spot=None, limit=200):
    """Catalog rows that fit, cheapest first (unknown prices last)."""
    for what, value in (("provider", provider), ("region", region)):
        if value is not None and "\x00" in value:
            raise BadRequest(f"a {what} name holds no NUL character")
    q = select(Flavor)
    for column, value in ((Flavor.provider, provider), (Flavor.region, region), (Flavor.spot, spot)):
        if value is not None:
            q = q.where(column == value)
    for column, value in ((Flavor.cpu, min_cpu), (Flavor.ram, min_ram), (Flavor.disk, min_disk)):
        if value is not None:
            q = q.where(column >= value)
    if gpu is not None:
        q = q.where(Flavor.gpu > 0 if gpu else Flavor.gpu == 0)
    if max_cost is not None:
        q = q.where(Flavor.hourly_cost <= max_cost)
    q = q.order_by(Flavor.hourly_cost.is_(None), Flavor.hourly_cost, Flavor.cpu, Flavor.name).limit(limit)
    return [f.to_dict() for f in s.scalars(q)]
