"""The user tasks run as (`--task-user`): a worker run as root starts each task with that
user's uid, gid and groups, so a task cannot read what is the worker's alone (its settings
file and token file, mode 0600 root, and /proc/<worker pid>/environ, which the kernel shows
to the same user only)."""
import os
import pwd
import stat
from pathlib import Path
from typing import NamedTuple


class TaskUser(NamedTuple):
    name: str
    uid: int
    gid: int
    groups: tuple
    home: str

    def popen_args(self):
        """What Popen needs to start a process as this user (extra_groups: without it the
        child would keep root's supplementary groups)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def env(self):
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def hand_over(self, path, tree=False):
        """Make path (and with tree=True all under it, links themselves not followed) this
        user's."""
        os.lchown(path, self.uid, self.gid)
        if tree:
            for dirpath, dirnames, filenames in os.walk(path):
                for name in dirnames + filenames:
                    os.lchown(os.path.join(dirpath, name), self.uid, self.gid)

    def _may(self, st, user_bit):
        """Whether the mode of `st` gives this user `user_bit` (S_IRUSR or S_IXUSR) or its
        group or other counterpart, as the kernel picks the class."""
        if st.st_uid == self.uid:
            return bool(st.st_mode & user_bit)
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return bool(st.st_mode & (user_bit >> 3))
        return bool(st.st_mode & (user_bit >> 6))

    def blocked(self, path):
        """The first directory from / to path (itself included) this user cannot go through,
        or None."""
        path = Path(path).resolve()
        for d in [*reversed(path.parents), path]:
            if not self._may(d.stat(), stat.S_IXUSR):
                return d
        return None

    def can_read(self, path):
        """Whether this user could open path (links followed) for reading itself."""
        try:
            real = Path(path).resolve(strict=True)
            return self.blocked(real.parent) is None and self._may(real.stat(), stat.S_IRUSR)
        except (OSError, RuntimeError):         # dangling, or a loop of links
            return False

def resolve(name):
    """The TaskUser for `name` (None for none, or for the worker's own user when it is not
    root); ValueError with one line when tasks cannot run as it."""
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"--task-user {name}: no such user on this host") from None
    if os.geteuid() != 0:
        if entry.pw_uid == os.geteuid():
            return None             # tasks run as the worker's user anyway
        raise ValueError(f"--task-user {name}: the worker runs as uid {os.geteuid()}, not root, "
                         f"so it cannot start tasks as another user")
    if entry.pw_uid == 0:
        raise ValueError(f"--task-user {name}: is root; tasks would read the worker's token")
    groups = tuple(g for g in os.getgrouplist(name, entry.pw_gid) if g != entry.pw_gid)
    return TaskUser(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def checked(name, workdir):
    """resolve(name), also refused (ValueError, one line) when that user cannot reach workdir
    (its tasks' directories are made under it)."""
    user = resolve(name)
    if user is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        blocked = user.blocked(workdir)
        if blocked is not None:
            raise ValueError(f"--task-user {name}: cannot go through {blocked} to the work dir "
                             f"{workdir} (make it searchable by others, or pick another --workdir)")
    return user

