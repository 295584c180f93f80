"""A docker engine of the tests' own: a dockerd on a socket in a temp dir, with a tiny busybox
image, and no networking side effects (no bridge, no iptables rules, ip_forward left alone).

The `dockerd` session fixture yields an Engine with `.host` (unix:///...sock) and `.image`.
"""
import ctypes
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import time

import pytest

from hosts import real_part_missing

IMAGE = "scitq-test/busybox:latest"
BUSYBOX = "/bin/busybox"
STORAGE_DRIVERS = ("overlay2", "vfs")      # overlay2 cannot sit on some filesystems (overlayfs)


class EngineError(Exception):
    pass


class Engine:
    """One dockerd; everything it writes stays under `base`, but two empty dirs in /run (removed
    after it when they were not there before)."""

    def __init__(self, base):
        self.base = base
        self.sock = os.path.join(base, "docker.sock")
        self.host = "unix://" + self.sock
        self.image = IMAGE
        self.proc = None
        self.driver = None
        self.client = None
        self.timings = {}
        # dockerd makes /run/docker/plugins, containerd's shims /run/containerd/s, whatever the
        # roots given
        self.made = [d for d in ("/run/docker", "/run/containerd") if not os.path.exists(d)]

    def command(self, driver):
        b = self.base
        return ["dockerd",
                # its own config: the host's /etc/docker/daemon.json must not apply, and its
                # identity key goes here rather than into /etc/docker
                "--config-file", os.path.join(b, "daemon.json"),
                "--data-root", os.path.join(b, f"data-{driver}"),
                "--exec-root", os.path.join(b, "exec"),
                "-H", self.host,
                "--pidfile", os.path.join(b, "dockerd.pid"),
                "--bridge=none", "--iptables=false", "--ip6tables=false",
                "--ip-forward=false", "--ip-masq=false",
                f"--storage-driver={driver}",
                # should it share a system containerd, its tasks stay apart from the system's
                "--containerd-namespace=scitq-test",
                "--containerd-plugins-namespace=scitq-test-plugins",
                "--shutdown-timeout=2"]

    def start(self):
        import docker
        config = {}
        if _dockerd_major() < 23:    # before 23 it keeps an identity key, in /etc/docker by default
            config["deprecated-key-path"] = os.path.join(self.base, "key.json")
        with open(os.path.join(self.base, "daemon.json"), "w") as f:
            json.dump(config, f)
        t0 = time.monotonic()
        errors = []
        for driver in STORAGE_DRIVERS:
            log_path = os.path.join(self.base, f"dockerd-{driver}.log")
            with open(log_path, "wb") as log:
                self.proc = subprocess.Popen(self.command(driver), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            deadline = time.monotonic() + 60
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    client = docker.DockerClient(base_url=self.host, timeout=10)
                    client.ping()
                except Exception:
                    time.sleep(0.1)
                    continue
                self.client, self.driver = client, driver
                self.timings["dockerd"] = time.monotonic() - t0
                return
            self._end_process()
            with open(log_path, errors="replace") as f:
                last = [line.strip() for line in f
                        if "level=error" in line or "level=fatal" in line]
            errors.append(f"{driver}: {last[-1] if last else 'no answer on ' + self.sock}")
        raise EngineError("dockerd did not start: " + "; ".join(errors))

    def load_image(self):
        """The test image: `docker import` of a rootfs holding a static busybox and its applets."""
        if not _is_static(BUSYBOX):
            raise EngineError(f"no static {BUSYBOX} for the test image "
                              "(apt-get install busybox-static)")
        t0 = time.monotonic()
        applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True,
                                 check=True).stdout.split()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d, mode in (("bin", 0o755), ("sbin", 0o755), ("usr", 0o755), ("usr/bin", 0o755),
                            ("usr/sbin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777),
                            ("proc", 0o555), ("sys", 0o555), ("dev", 0o755)):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, mode
                tar.addfile(info)
            tar.add(BUSYBOX, arcname="bin/busybox")
            for path in applets:
                if path != "bin/busybox":
                    info = tarfile.TarInfo(path)
                    info.type, info.linkname = tarfile.SYMTYPE, "/bin/busybox"
                    tar.addfile(info)
            for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                                              "nobody:x:65534:65534:nobody:/:/bin/false\n"),
                               ("etc/group", "root:x:0:\nnogroup:x:65534:\n")):
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        repo, tag = IMAGE.rsplit(":", 1)
        self.client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
        self.client.images.get(IMAGE)
        self.timings["image"] = time.monotonic() - t0

    def stop(self):
        """Containers, dockerd, what it started, its mounts and its dirs: all gone."""
        if self.client is not None:
            try:        # so that dockerd has nothing to wait for when it stops
                for container in self.client.containers.list(all=True):
                    container.remove(force=True)
            except Exception:
                pass
            self.client.close()
        self._end_process()
        # If dockerd had to be killed, containerd and its shims (which name our dirs) remain.
        for pid in _pids_mentioning(self.base):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)
        for top in self.made:          # empty dirs only: anything else there is not ours
            for d, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
                try:
                    os.rmdir(d)
                except OSError:
                    pass

    def _end_process(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _dockerd_major():
    out = subprocess.run(["dockerd", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.", out)
    return int(m[1]) if m else 0


def _is_static(path):
    """An ELF executable without an interpreter (PT_INTERP): it runs in an empty rootfs."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                return False
            e = "<" if head[5] == 1 else ">"
            if head[4] == 2:        # 64-bit
                (phoff,) = struct.unpack_from(e + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
            else:
                (phoff,) = struct.unpack_from(e + "I", head, 28)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from(e + "I", table, i * phentsize)[0] != 3 for i in range(phnum))


def _pids_mentioning(path):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if path.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _unmount_under(path):
    """Unmount everything at or below path, deepest first (dockerd leaves the host's netns
    bound in exec-root when a container used --network host). By syscall: umount(8) would
    leave /run/mount behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(5):
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4].encode().decode("unicode_escape") for line in f]
        points = sorted({p for p in points if p == path or p.startswith(path + "/")},
                        key=len, reverse=True)
        if not points:
            return
        for p in points:
            if libc.umount2(p.encode(), 0) != 0:
                libc.umount2(p.encode(), 2)         # MNT_DETACH


def network_state():
    """What dockerd would change on the host's network if it were let."""
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        state = {"net.ipv4.ip_forward": f.read().strip(),
                 "docker0": os.path.exists("/sys/class/net/docker0")}
    if shutil.which("iptables"):
        for table in ("filter", "nat"):
            out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
            state[f"iptables -t {table}"] = out.stdout if out.returncode == 0 else None
    return state


def _check_network(before, when):
    after = network_state()
    changed = [k for k in before if before[k] != after.get(k)]
    assert not changed, f"{when} changed the host's network: {changed}"


@pytest.fixture(scope="session")
def dockerd():
    """A dockerd of the session's own with the busybox test image."""
    if shutil.which("dockerd") is None:
        real_part_missing("dockerd not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        real_part_missing("dockerd needs root")
    try:
        import docker  # noqa: F401
    except ImportError:
        real_part_missing("the docker SDK is not installed (pip install 'scitq[docker]')")
    before = network_state()
    # in /tmp: unix socket paths must stay short
    engine = Engine(tempfile.mkdtemp(prefix="scitq-dockerd-", dir="/tmp"))
    try:
        engine.start()
        engine.load_image()
    except EngineError as exc:
        engine.stop()
        real_part_missing(str(exc))
    except BaseException:
        engine.stop()
        raise
    try:
        _check_network(before, "starting dockerd")
        yield engine
    finally:
        engine.stop()
        _check_network(before, "dockerd")
