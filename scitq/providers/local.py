"""The local provider: hosts on this machine, each a Debian system booted with systemd-nspawn.

A host is a systemd-nspawn container booted (`--boot`, systemd as PID 1, sshd running) from
one cached Debian image with a throwaway overlay (`--volatile=overlay`: what a host writes
lives in memory and goes with it). Each host has a network namespace `scitq-<name>` whose
eth0 is one end of a veth pair; the other end is on a bridge this provider owns (created with
the first host, removed with the last). The bridge takes the subnet's first address, which is
how the hosts reach this machine (`bridge_address`); hosts get the next free ones. There is
no route out of the subnet and no forwarding: hosts reach no package index, like cloud hosts
with closed egress.

Needs root. State (who has which address, which process) is a JSON file under `run_dir`,
changed under a file lock so concurrent creates and deletes do not collide; a new provider
object (a restarted server) picks up the hosts an earlier one made.

Config (all optional):
    cache_dir     where the image is built once and kept   (/var/cache/scitq/local)
    run_dir       state, lock, per-host files and logs      (/run/scitq/local)
    subnet        private IPv4 /24 (up to /29) of the bridge (10.213.7.0/24)
    bridge        the bridge's name, at most 11 characters  (scitqbr0)
    max_hosts     how many hosts may run at once            (16)
    boot_timeout  seconds for a host to answer SSH          (60)
    stop_timeout  seconds for a clean shutdown before kill  (10)
    suite, mirror the Debian suite and mirror of the image  (from this machine's apt sources)
    packages      extra packages for the image              ([])
    price_per_cpu an hourly price per core, to try recruitment's cost caps on one machine (0)

Flavors are synthetic (nothing limits a host's CPU or memory); `user_data` is ignored.
"""
import datetime
import fcntl
import glob
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager

from scitq.errors import BadRequest, InstanceNotFound, ProviderError, ProviderUnavailable, QuotaExceeded
from scitq.providers import netns
from scitq.providers.base import TAG, carries, Flavor, Instance, InstanceStatus, Provider, Quota

log = logging.getLogger(__name__)
_CHILDREN = {}   # pid -> Popen of the nspawn processes this process started, to reap them

REGION = "local"
FLAVORS = [  # name, cpu, ram GiB, disk GiB
    ("local-1", 1, 1, 10),
    ("local-2", 2, 2, 20),
    ("local-4", 4, 4, 40),
]
PACKAGES = ["openssh-server", "python3", "python3-venv", "systemd-sysv", "dbus", "iproute2", "procps"]
IMAGE_RECIPE = 1            # bump when _customize() changes, so a new image is built
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")      # matched whole
DEFAULTS = {
    "cache_dir": "/var/cache/scitq/local",
    "run_dir": "/run/scitq/local",
    "subnet": "10.213.7.0/24",
    "bridge": "scitqbr0",
    "max_hosts": 16,
    "boot_timeout": 60,
    "stop_timeout": 10,
    "build_timeout": 900,
    "suite": None,
    "mirror": None,
    "packages": [],
    "price_per_cpu": 0.0,
}
# Units a host does not need: timers that would reach for a package index, the console login.
MASKED_UNITS = ["apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
                "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "console-getty.service"]
SSHD_CONFIG = """\
# scitq local provider: key authentication only; the host key is made at first start.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""
# Each host makes its own host key on boot (the image has none), so no two hosts share one.
SSH_HOSTKEY_DROPIN = """\
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -s /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
"""


class LocalProvider(Provider):
    name = "local"

    def __init__(self, config=None):
        super().__init__(config)
        self.config = {**DEFAULTS, **{k: v for k, v in self.config.items() if v is not None}}
        self.cache_dir = os.path.abspath(self.config["cache_dir"])
        self.run_dir = os.path.abspath(self.config["run_dir"])
        try:
            self.subnet = ipaddress.IPv4Network(self.config["subnet"])
        except ValueError as exc:
            raise BadRequest(f"local provider: bad subnet {self.config['subnet']!r}: {exc}") from None
        if not self.subnet.is_private or not 24 <= self.subnet.prefixlen <= 29:
            raise BadRequest(f"local provider: subnet {self.subnet} must be a private IPv4 network "
                             "between /24 and /29")
        self.bridge = self.config["bridge"]
        if not re.fullmatch(r"[A-Za-z0-9_]{1,11}", self.bridge):
            raise BadRequest(f"local provider: bridge name {self.bridge!r} must be 1-11 letters, digits or _")
        addresses = list(self.subnet.hosts())
        self.bridge_address = str(addresses[0])     # this machine, as the hosts see it
        self._host_addresses = [str(a) for a in addresses[1:]]
        self.max_hosts = min(int(self.config["max_hosts"]), len(self._host_addresses))
        self.build_seconds = None                   # how long image() took to build, if it did

    # --- catalog ------------------------------------------------------------------

    def check(self):
        if os.geteuid() != 0:
            raise ProviderUnavailable("the local provider needs root (network namespaces, bridges, systemd-nspawn)")
        tools = ["systemd-nspawn", "ip"]
        if not os.path.isdir(self.image_path()):
            tools.append("debootstrap")
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            raise ProviderUnavailable(f"the local provider needs {', '.join(missing)} "
                                      "(Debian packages systemd-container, iproute2, debootstrap)")

    def regions(self):
        return [REGION]

    def flavors(self, region=None):
        if region not in (None, REGION):
            return []
        price = float(self.config["price_per_cpu"])
        return [Flavor(self.name, REGION, name, cpu, ram, disk, hourly_cost=cpu * price)
                for name, cpu, ram, disk in FLAVORS]

    def quotas(self, region):
        hosts = self._load()
        cores = sum(_flavor_cpu(h["flavor"]) for h in hosts.values())
        return [Quota(region, "instances", len(hosts), self.max_hosts),
                Quota(region, "cores", cores, None)]

    # --- the image ----------------------------------------------------------------

    def _apt_source(self):
        suite, mirror, keyring = apt_source()
        return self.config["suite"] or suite, self.config["mirror"] or mirror, keyring

    def _packages(self):
        return sorted(set(PACKAGES) | set(self.config["packages"]))

    def image_path(self):
        """Where the image for this config lives (built or not): named by suite and recipe."""
        suite = self.config["suite"]
        if suite is None:
            try:
                suite = apt_source()[0]
            except ProviderUnavailable:
                suite = "unknown"
        digest = hashlib.sha256(json.dumps([suite, self._packages(), IMAGE_RECIPE]).encode()).hexdigest()
        return os.path.join(self.cache_dir, f"{suite}-{digest[:10]}")

    def image(self):
        """The image's root directory, built first if missing (about a minute, once).

        Built in a temporary directory and renamed into place, under a lock: a half-built
        image is never used, and two processes never build at once."""
        final = self.image_path()
        if os.path.isdir(final):
            return final
        os.makedirs(self.cache_dir, exist_ok=True)
        with _flock(os.path.join(self.cache_dir, ".lock")):
            if os.path.isdir(final):
                return final
            for stale in glob.glob(os.path.join(self.cache_dir, ".build-*")):
                _remove_tree(stale)       # a build that died: nobody else holds the lock
            suite, mirror, keyring = self._apt_source()
            tmp = tempfile.mkdtemp(prefix=".build-", dir=self.cache_dir)
            try:
                rootfs = os.path.join(tmp, "rootfs")
                cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(self._packages())}"]
                if keyring:
                    cmd.append(f"--keyring={keyring}")
                cmd += [suite, rootfs, mirror]
                log.info("building the local provider's image: %s", " ".join(cmd))
                started = time.monotonic()
                logfile = os.path.join(self.cache_dir, "build.log")
                with open(logfile, "wb") as out:
                    try:
                        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              timeout=self.config["build_timeout"])
                    except subprocess.TimeoutExpired:
                        raise ProviderError(f"debootstrap took over {self.config['build_timeout']} s; see {logfile}")
                if proc.returncode != 0:
                    raise ProviderError(f"debootstrap failed ({proc.returncode}): {_tail(logfile)}")
                _customize(rootfs, {"suite": suite, "packages": self._packages(), "recipe": IMAGE_RECIPE,
                                    "built_at": _now()})
                os.rename(rootfs, final)
                self.build_seconds = time.monotonic() - started
                log.info("local image built in %.0f s: %s", self.build_seconds, final)
            finally:
                _remove_tree(tmp)
        return final

    # --- instances --------------------------------------------------------------------

    def create(self, spec):
        if not isinstance(spec.name, str) or not HOST_NAME.fullmatch(spec.name):
            raise BadRequest(f"local host name {spec.name!r} must be a valid hostname (a-z, 0-9, -)")
        if spec.region not in (None, REGION):
            raise BadRequest(f"the local provider has one region, {REGION!r}, not {spec.region!r}")
        if spec.flavor not in {f[0] for f in FLAVORS}:
            raise BadRequest(f"unknown local flavor {spec.flavor!r}: one of {', '.join(f[0] for f in FLAVORS)}")
        self.check()
        image = self.image()

        host_dir = os.path.join(self.run_dir, "hosts", spec.name)
        with self._state() as hosts:
            if spec.name in hosts:
                raise ProviderError(f"a local host named {spec.name!r} exists already")
            if len(hosts) >= self.max_hosts:
                raise QuotaExceeded(f"the local provider runs at most {self.max_hosts} hosts")
            used = {h["ip"] for h in hosts.values()}
            address = next(a for a in self._host_addresses if a not in used)
            record = hosts[spec.name] = {
                "id": spec.name, "name": spec.name, "flavor": spec.flavor, "region": REGION,
                "ip": address, "tags": {**spec.tags, TAG: spec.name}, "created_at": _now(),
                "status": "creating", "netns": f"scitq-{spec.name}",
                "veth": f"{self.bridge}-{address.rsplit('.', 1)[1]}",    # at most 15 characters
                "cgroup": None if _host_has_systemd() else f"scitq/{spec.name}",
                "dir": host_dir, "image": image, "pid": None, "started": None,
            }
            netns.ensure_bridge(self.bridge, self.bridge_address, self.subnet.prefixlen)

        try:
            t0 = time.monotonic()
            self._boot(record, spec)
            self._wait_ssh(record)
            record["boot_seconds"] = round(time.monotonic() - t0, 3)
        except BaseException:
            self._teardown(record)
            self._forget(spec.name)
            raise
        with self._state() as hosts:
            hosts[spec.name] = record = {**record, "status": "running"}
        log.info("local host %s up at %s in %.2f s", spec.name, record["ip"], record["boot_seconds"])
        return self._instance(record)

    def get(self, instance_id):
        record = self._load().get(instance_id)
        if record is None:
            raise InstanceNotFound(f"no local host {instance_id!r}")
        return self._instance(record)

    def list(self, tags=None):
        return [self._instance(r) for r in self._load().values() if carries(r["tags"], tags)]

    def delete(self, instance_id):
        with self._state() as hosts:
            record = hosts.get(instance_id)
            if record is None:
                return
            record["status"] = "deleting"
        self._teardown(record)
        self._forget(instance_id)

    # --- a host's life ------------------------------------------------------------------

    def _boot(self, record, spec):
        os.makedirs(record["dir"], exist_ok=True)
        keys = os.path.join(record["dir"], "authorized_keys")
        fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write((spec.ssh_public_key or "").strip() + "\n")
        netns.add_host_network(record["netns"], record["veth"], self.bridge, record["ip"], self.subnet.prefixlen)

        cmd = ["systemd-nspawn", "--directory", record["image"], "--boot", "--volatile=overlay",
               f"--network-namespace-path={netns.NETNS_DIR}/{record['netns']}", "--register=no",
               f"--machine={record['name']}", f"--uuid={uuid.uuid4()}", "--link-journal=no",
               "--console=passive", f"--bind-ro={keys}:/root/.ssh/authorized_keys"]
        cgroup_procs = []
        if record["cgroup"]:
            # No systemd on this machine to give nspawn a scope: it keeps the cgroup it starts
            # in, so it starts in one of its own (see netns.py).
            cmd.insert(1, "--keep-unit")
            cgroup_procs = netns.make_cgroups(record["cgroup"])
        logfile = os.path.join(record["dir"], "console.log")
        # A shell joins the cgroups, then execs nspawn (same pid). Its own session: the host
        # outlives this process (a restarted server finds its hosts again); while this process
        # lives, it reaps the host when it stops (_CHILDREN).
        joiner = 'for f in $SCITQ_CGROUP_PROCS; do echo $$ > "$f" || exit 1; done; exec "$@"'
        env = {**os.environ, "SCITQ_CGROUP_PROCS": " ".join(cgroup_procs)}
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(["sh", "-c", joiner, "sh", *cmd], env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _CHILDREN[proc.pid] = proc
        pid = proc.pid
        with self._state() as hosts:
            record["pid"], record["started"] = pid, netns.start_time(pid)
            hosts[record["id"]] = record

    def _wait_ssh(self, record):
        """Return once sshd on the host sends its banner; raise if nspawn dies or time runs out."""
        timeout = float(self.config["boot_timeout"])
        deadline = time.monotonic() + timeout
        while True:
            if not netns.alive(record["pid"], record["started"]):
                raise ProviderError(f"local host {record['name']} stopped while booting: "
                                    f"{_tail(os.path.join(record['dir'], 'console.log'))}")
            try:
                with socket.create_connection((record["ip"], 22), timeout=1) as sock:
                    sock.settimeout(2)
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise ProviderError(f"local host {record['name']} did not answer SSH within {timeout:.0f} s: "
                                    f"{_tail(os.path.join(record['dir'], 'console.log'))}")
            time.sleep(0.1)

    def _teardown(self, record):
        """Stop the host (a clean shutdown, then kill), then remove its network, cgroups and files."""
        inode = netns.netns_inode(record["netns"])
        pid, started = record.get("pid"), record.get("started")
        if netns.alive(pid, started):
            netns.kill([pid], signal.SIGTERM)     # nspawn asks the host's systemd to power off
            if not netns.wait_gone(pid, started, float(self.config["stop_timeout"])):
                log.warning("local host %s did not stop in time: killing it", record["name"])
                netns.kill([pid])
        _reap(pid)
        # Whatever is left in the host's namespace or cgroups (nspawn killed, a stuck child).
        deadline = time.monotonic() + 10
        while True:
            left = set(netns.pids_in_netns(inode))
            if record.get("cgroup"):
                left |= set(netns.cgroup_pids(record["cgroup"]))
            left.discard(os.getpid())
            if not left or time.monotonic() > deadline:
                break
            netns.kill(left)
            time.sleep(0.05)
        netns.remove_host_network(record["netns"], record["veth"])
        if record.get("cgroup"):
            netns.remove_cgroups(record["cgroup"])
            netns.remove_cgroups(os.path.dirname(record["cgroup"]))   # if it was the last one
        shutil.rmtree(record["dir"], ignore_errors=True)
        # nspawn's own per-machine directory, which it leaves behind when /run is not a tmpfs
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{record['name']}", ignore_errors=True)

    def _forget(self, instance_id):
        with self._state() as hosts:
            hosts.pop(instance_id, None)
            if not hosts:
                netns.remove_link(self.bridge)

    def _instance(self, record):
        if record["pid"] in _CHILDREN:
            _CHILDREN[record["pid"]].poll()        # reap a host that stopped by itself
        status = {"creating": InstanceStatus.CREATING, "running": InstanceStatus.RUNNING,
                  "deleting": InstanceStatus.DELETING}[record["status"]]
        if status is not InstanceStatus.DELETING and record["pid"] is not None \
                and not netns.alive(record["pid"], record["started"]):
            status = InstanceStatus.FAILED
        return Instance(provider=self.name, id=record["id"], name=record["name"], region=record["region"],
                        flavor=record["flavor"], status=status, ip=record["ip"], private_ip=record["ip"],
                        user="root", tags=dict(record["tags"]), created_at=record["created_at"])

    # --- state -------------------------------------------------------------------

    def _load(self):
        try:
            with open(os.path.join(self.run_dir, "hosts.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    @contextmanager
    def _state(self):
        """The hosts, under the lock; written back when the block ends without error."""
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        with _flock(os.path.join(self.run_dir, "lock")):
            hosts = self._load()
            yield hosts
            path = os.path.join(self.run_dir, "hosts.json")
            with open(path + ".tmp", "w") as f:
                json.dump(hosts, f, indent=1)
            os.replace(path + ".tmp", path)


# --- helpers ------------------------------------------------------------------------

def apt_source(etc="/etc/apt"):
    """(suite, mirror, keyring) of this machine's first plain Debian source with `main`,
    read from its deb822 `.sources` files or its one-line `sources.list`."""
    for uris, suites, components, keyring in [*_deb822_sources(etc), *_one_line_sources(etc)]:
        uris = [u for u in uris if re.match(r"(https?|file)://", u)]
        suites = [s for s in suites if re.fullmatch(r"[a-z]+", s)]   # bookworm, not bookworm-updates
        if uris and suites and "main" in components:
            if keyring and not os.path.isfile(keyring):
                keyring = None           # an inline key, or a file not here: debootstrap's default
            return suites[0], uris[0], keyring
    raise ProviderUnavailable("no Debian suite with 'main' found in this machine's apt sources: "
                              "give the local provider 'suite' and 'mirror'")


def _deb822_sources(etc):
    """(uris, suites, components, keyring) of each enabled `deb` stanza of the .sources files,
    parsed by python-debian."""
    from debian.deb822 import Deb822
    for path in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.sources"))):
        with open(path) as f:
            for fields in Deb822.iter_paragraphs(f, use_apt_pkg=False):
                if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes").lower() != "no":
                    yield (fields.get("URIs", "").split(), fields.get("Suites", "").split(),
                           fields.get("Components", "").split(), fields.get("Signed-By"))


def _one_line_sources(etc):
    """(uris, suites, components, keyring) of each `deb` line of the one-line-style lists
    (python-debian reads deb822 only; python-apt's reader is not on PyPI)."""
    for path in [os.path.join(etc, "sources.list")] + sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.list"))):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line.startswith("deb "):
                continue
            options = re.search(r"\[([^]]*)\]", line)
            keyring = None
            if options:
                for opt in options.group(1).split():
                    if opt.startswith("signed-by="):
                        keyring = opt.split("=", 1)[1]
                line = line[:options.start()] + line[options.end():]
            parts = line.split()
            if len(parts) >= 4:
                yield [parts[1]], [parts[2]], parts[3:], keyring


def _customize(rootfs, info):
    """Make a debootstrapped tree a host image: no hostname, machine id or SSH host key of its
    own (each host gets its own), key-only sshd, no timers that would reach for a package index."""
    def path(p):
        return os.path.join(rootfs, p.lstrip("/"))

    for name in [path("/etc/hostname"), *glob.glob(path("/etc/ssh/ssh_host_*"))]:
        if os.path.lexists(name):
            os.remove(name)
    with open(path("/etc/machine-id"), "w"):
        pass                                   # empty: systemd makes a transient one per boot
    dbus_id = path("/var/lib/dbus/machine-id")
    if os.path.lexists(dbus_id):
        os.remove(dbus_id)
        os.symlink("/etc/machine-id", dbus_id)
    with open(path("/etc/hosts"), "w") as f:
        f.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    os.makedirs(path("/etc/ssh/sshd_config.d"), exist_ok=True)
    with open(path("/etc/ssh/sshd_config.d/scitq.conf"), "w") as f:
        f.write(SSHD_CONFIG)
    os.makedirs(path("/etc/systemd/system/ssh.service.d"), exist_ok=True)
    with open(path("/etc/systemd/system/ssh.service.d/scitq-hostkey.conf"), "w") as f:
        f.write(SSH_HOSTKEY_DROPIN)
    for unit in MASKED_UNITS:
        link = path(f"/etc/systemd/system/{unit}")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink("/dev/null", link)
    os.makedirs(path("/root/.ssh"), mode=0o700, exist_ok=True)
    for deb in glob.glob(path("/var/cache/apt/archives/*.deb")):
        os.remove(deb)
    with open(path("/etc/scitq-image.json"), "w") as f:
        json.dump(info, f, indent=1)


def _remove_tree(path):
    """rm -rf a build directory, unmounting first whatever a dead debootstrap left mounted
    in it (/proc, /sys): never delete through a mount."""
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        mounts = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for mount in sorted((m for m in mounts if m == path or m.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    with open("/proc/mounts") as f:
        if any(line.split()[1].startswith(path + "/") for line in f):
            raise ProviderError(f"cannot unmount what is mounted under {path}: left it in place")
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _flock(path):
    """An exclusive lock on the file, waited for with sleeps: a blocking flock() would stop a
    gevent server's every greenlet, the holder too (its lock conflicts with ours in-process)."""
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _reap(pid):
    """Collect a stopped nspawn this process started, so it leaves no zombie behind."""
    proc = _CHILDREN.get(pid)
    if proc is None:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return
    _CHILDREN.pop(pid, None)


def _host_has_systemd():
    return os.path.isdir("/run/systemd/system")


def _flavor_cpu(name):
    return next((cpu for n, cpu, _ram, _disk in FLAVORS if n == name), 0)


def _tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return "(no log)"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
