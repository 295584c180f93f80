"""Plumbing for the local provider: network namespaces, a bridge and veth pairs, the
processes and cgroups of a booted host. Plain functions over `ip`, /proc and /sys; no state.

Every function that removes something is idempotent: removing what is gone is not an error.
"""
import os
import signal
import subprocess
import time

from scitq.errors import ProviderError

NETNS_DIR = "/run/netns"
CGROUP_ROOT = "/sys/fs/cgroup"


def ip(*args, netns=None, check=True):
    """Run `ip ARGS` (inside `netns` when given); raise ProviderError with its message."""
    cmd = ["ip", *(("-n", netns) if netns else ()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ProviderError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def link_exists(name, netns=None):
    return ip("link", "show", "dev", name, netns=netns, check=False).returncode == 0


def netns_exists(name):
    return os.path.exists(os.path.join(NETNS_DIR, name))


# --- the bridge the provider owns ------------------------------------------------

def ensure_bridge(name, address, prefix):
    """The bridge up with `address/prefix`, created if missing (kept if a crash left it)."""
    if not link_exists(name):
        ip("link", "add", name, "type", "bridge")
    have = ip("-o", "-4", "addr", "show", "dev", name).stdout
    if f" {address}/{prefix} " not in have:
        ip("addr", "add", f"{address}/{prefix}", "dev", name)
    ip("link", "set", name, "up")


def remove_link(name):
    ip("link", "del", name, check=False)


# --- one host's namespace and veth -------------------------------------------------

def add_host_network(netns, veth, bridge, address, prefix):
    """A namespace `netns` whose eth0 has `address/prefix`, its peer `veth` on `bridge`.

    No default route: a host reaches its subnet (the bridge's address is this machine) and
    nothing else, so a stray packet fails at once inside the host instead of leaving it."""
    remove_link(veth)                      # a stale pair left by a crash, if any
    if not netns_exists(netns):
        ip("netns", "add", netns)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", veth, "master", bridge, "up")
    ip("addr", "replace", f"{address}/{prefix}", "dev", "eth0", netns=netns)
    ip("link", "set", "eth0", "up", netns=netns)
    ip("link", "set", "lo", "up", netns=netns)


def remove_host_network(netns, veth):
    remove_link(veth)                      # removes its peer too
    if netns_exists(netns):
        ip("netns", "del", netns, check=False)


def netns_inode(netns):
    try:
        return os.stat(os.path.join(NETNS_DIR, netns)).st_ino
    except FileNotFoundError:
        return None


def pids_in_netns(inode):
    """Every process whose network namespace is the one with this inode (a host's processes)."""
    if inode is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


# --- processes ----------------------------------------------------------------

def start_time(pid):
    """The process's start time (clock ticks since boot), to tell it from a later one with
    the same pid; None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid, started):
    return pid is not None and started is not None and start_time(pid) == started


def wait_gone(pid, started, timeout):
    deadline = time.monotonic() + timeout
    while alive(pid, started):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def kill(pids, sig=signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# --- cgroups --------------------------------------------------------------------
# On a host without systemd as PID 1, systemd-nspawn --keep-unit splits the cgroup it was
# started in into "supervisor" and "payload". Two hosts started from the same cgroup would
# share "payload" and their inner systemds would fight over it, so each host's nspawn is
# started in a cgroup of its own, in every hierarchy systemd uses.

def cgroup_hierarchies():
    """The cgroup mounts a container's systemd manages: the unified one (pure cgroup v2, or
    /sys/fs/cgroup/unified in hybrid mode) and the named legacy `systemd` one if mounted."""
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        return [CGROUP_ROOT]
    found = []
    for sub in ("unified", "systemd"):
        path = os.path.join(CGROUP_ROOT, sub)
        if os.path.exists(os.path.join(path, "cgroup.procs")):
            found.append(path)
    return found


def make_cgroups(relpath):
    """Create `relpath` in each hierarchy; return the cgroup.procs files to join."""
    procs = []
    for root in cgroup_hierarchies():
        path = os.path.join(root, relpath)
        os.makedirs(path, exist_ok=True)
        procs.append(os.path.join(path, "cgroup.procs"))
    return procs


def cgroup_pids(relpath):
    pids = set()
    for root in cgroup_hierarchies():
        for dirpath, _dirs, files in os.walk(os.path.join(root, relpath)):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids.update(int(line) for line in f if line.strip())
                except OSError:
                    pass
    return sorted(pids)


def remove_cgroups(relpath):
    """rmdir the cgroup tree, deepest first (cgroupfs only removes empty directories)."""
    for root in cgroup_hierarchies():
        top = os.path.join(root, relpath)
        for dirpath, _dirs, _files in sorted(os.walk(top, topdown=False), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
