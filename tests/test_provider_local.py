"""The local provider: real hosts (systemd-nspawn containers) on this machine, reached by SSH.

Needs root, debootstrap, systemd-nspawn and ip. In CI (CI=true) nothing here skips: a missing
part fails. The image is built once (about a minute) into the provider's cache dir and reused.
"""
import os
import subprocess
import time

import pytest
from hosts import delete_hosts, local_provider, make_ssh_key
from provider_contract import check_catalog, check_lifecycle

from scitq.errors import BadRequest, InstanceNotFound, ProviderUnavailable, QuotaExceeded
from scitq.providers import TAG, InstanceSpec, InstanceStatus, get_provider
from scitq.providers import netns
from scitq.providers.local import apt_source

# A run dir, bridge and subnet of the tests' own, so they never meet hosts made by anything else.
CONFIG = {"run_dir": "/run/scitq/test-provider-local", "bridge": "scitqbrtest",
          "subnet": "10.213.9.0/24", "max_hosts": 2}
SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
       "-o", "ControlMaster=no", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


def _name(suffix):
    return f"lt{os.getpid() % 100000}-{suffix}"


@pytest.fixture(scope="module")
def provider():
    p = local_provider(CONFIG)
    started = time.monotonic()
    p.image()                            # built once, then reused from the cache dir
    print(f"\nlocal image ready in {time.monotonic() - started:.1f} s: {p.image_path()}")
    try:
        yield p
    finally:
        delete_hosts(p)


@pytest.fixture
def local(provider):
    """The provider; every host it made is deleted after the test, passed or failed."""
    try:
        yield provider
    finally:
        delete_hosts(provider)


@pytest.fixture
def ssh_key(tmp_path):
    return make_ssh_key(tmp_path / "id_ed25519")


def ssh(key, ip, command):
    proc = subprocess.run([*SSH, "-i", str(key), f"root@{ip}", command], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"ssh {ip} {command!r}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def nspawn_pids(name):
    """Live systemd-nspawn processes started for host `name`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"systemd-nspawn") and f"--machine={name}".encode() in argv \
                and netns.start_time(int(entry)) is not None:
            pids.append(int(entry))
    return pids


# --- without root -------------------------------------------------------------------

def test_catalog():
    p = get_provider("local", CONFIG)
    flavors = check_catalog(p, "local")
    assert {f.name for f in flavors} >= {"local-1", "local-2", "local-4"}
    assert all(f.hourly_cost == 0 for f in flavors)
    assert p.regions() == ["local"]
    assert p.bridge_address == "10.213.9.1"


def test_bad_specs_are_refused_before_anything_is_made():
    p = get_provider("local", CONFIG)
    with pytest.raises(BadRequest):
        p.create(InstanceSpec(name="Not_A_Hostname", flavor="local-1", region="local"))
    with pytest.raises(BadRequest):
        p.create(InstanceSpec(name="ok", flavor="local-99", region="local"))
    with pytest.raises(BadRequest):
        p.create(InstanceSpec(name="ok", flavor="local-1", region="GRA11"))
    with pytest.raises(BadRequest):
        get_provider("local", {"subnet": "8.8.8.0/24"})      # never a public network


def test_apt_source_reads_deb822_and_one_line_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: trixie trixie-updates\n"
        "Components: main\nSigned-By: /nonexistent.gpg\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: trixie-security\nComponents: main\n")
    assert apt_source(str(tmp_path)) == ("trixie", "http://mirror.invalid/debian", None)

    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb-src http://mirror.invalid/debian bookworm main\n"
        "deb [arch=amd64] http://mirror.invalid/debian bookworm main contrib\n")
    assert apt_source(str(tmp_path)) == ("bookworm", "http://mirror.invalid/debian", None)

    (tmp_path / "sources.list").write_text("")
    with pytest.raises(ProviderUnavailable):
        apt_source(str(tmp_path))


def test_apt_source_skips_disabled_stanzas_and_reads_folded_fields(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    keyring = tmp_path / "debian.gpg"
    keyring.write_bytes(b"")
    (tmp_path / "sources.list.d" / "a.sources").write_text(
        "Types: deb\nURIs: http://off.invalid/debian\nSuites: trixie\nComponents: main\nEnabled: no\n\n"
        "# a comment between fields\ntypes: deb-src deb\nuris: http://on.invalid/debian\n"
        "suites: trixie-updates\n trixie\ncomponents: contrib\n main\n"
        f"signed-by: {keyring}\n")
    assert apt_source(str(tmp_path)) == ("trixie", "http://on.invalid/debian", str(keyring))


# --- real hosts ---------------------------------------------------------------------

def test_lifecycle(local, ssh_key):
    spec = InstanceSpec(name=_name("life"), flavor="local-1", region="local",
                        ssh_public_key=ssh_key.with_suffix(".pub").read_text(), tags={"purpose": "test"})
    check_lifecycle(local, spec, lambda provider, instance: provider.get(instance.id))


def test_two_hosts_with_ssh_systemd_and_private_filesystems(local, ssh_key):
    public_key = ssh_key.with_suffix(".pub").read_text()
    names = [_name("a"), _name("b")]
    hosts = []
    for name in names:
        started = time.monotonic()
        hosts.append(local.create(InstanceSpec(name=name, flavor="local-2", region="local",
                                               ssh_public_key=public_key, tags={"batch": "acceptance"})))
        print(f"\n{name}: create() to SSH banner in {time.monotonic() - started:.2f} s")
    a, b = hosts
    assert all(h.status is InstanceStatus.RUNNING and h.user == "root" for h in hosts)
    assert a.ip != b.ip and {a.ip, b.ip} <= {f"10.213.9.{i}" for i in range(2, 255)}
    assert {i.id for i in local.list(tags={"batch": "acceptance"})} == {a.id, b.id}
    assert [i.id for i in local.list(tags={TAG: names[1]})] == [b.id]
    assert [q.used for q in local.quotas("local") if q.resource == "instances"] == [2]
    with pytest.raises(QuotaExceeded):                   # max_hosts = 2
        local.create(InstanceSpec(name=_name("c"), flavor="local-1", region="local"))

    for host in hosts:
        hostname, pid1, state = ssh(ssh_key, host.ip, "hostname; cat /proc/1/comm; "
                                    "systemctl is-system-running --wait || true").splitlines()
        assert hostname == host.name
        assert pid1 == "systemd"
        assert state == "running", ssh(ssh_key, host.ip, "systemctl --failed --no-legend")

    ssh(ssh_key, a.ip, "echo only-here > /root/only-on-a")
    assert ssh(ssh_key, a.ip, "cat /root/only-on-a") == "only-here"
    assert ssh(ssh_key, b.ip, "test -e /root/only-on-a && echo present || echo absent") == "absent"
    assert not os.path.exists(os.path.join(local.image(), "root/only-on-a"))   # the image is untouched
    assert ssh(ssh_key, a.ip, "cat /etc/machine-id") != ssh(ssh_key, b.ip, "cat /etc/machine-id")

    # What each host is made of, to check that nothing of it is left afterwards.
    pids = {}
    for host in hosts:
        inode = netns.netns_inode(f"scitq-{host.name}")
        assert inode is not None
        for pid in netns.pids_in_netns(inode) + nspawn_pids(host.name):
            pids[pid] = netns.start_time(pid)
    assert len(pids) >= 2 * 3          # per host at least nspawn, systemd and sshd

    for host in hosts:
        local.delete(host.id)
        local.delete(host.id)          # idempotent
        with pytest.raises(InstanceNotFound):
            local.get(host.id)
    assert local.list() == []

    netns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    with open("/proc/mounts") as f:
        mounts = f.read()
    for name in names:
        assert f"scitq-{name}" not in netns_list
        assert f"/run/netns/scitq-{name}" not in mounts
        assert nspawn_pids(name) == []
    assert CONFIG["bridge"] not in links           # the bridge and every veth (named after it)
    assert local.image() not in mounts and CONFIG["run_dir"] not in mounts
    still = [pid for pid, started in pids.items() if netns.alive(pid, started)]
    assert still == [], f"processes of deleted hosts still alive: {still}"
    assert os.listdir(os.path.join(CONFIG["run_dir"], "hosts")) == []
