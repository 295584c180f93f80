"""The server's own SSH key: put on every host it rents, used to bootstrap them."""
import os
import subprocess
import tempfile
import threading
from pathlib import Path

from scitq.errors import ProviderUnavailable

_making = threading.Lock()     # job threads ask at once when several hosts are rented


def ensure_keypair(data_dir):
    """(private key path, public key text), made with ssh-keygen on first use.

    The pair is made in a temporary dir and moved in place, public key last, so no caller
    (another thread, or another server process on the same data dir) ever reads half of it.
    """
    key = Path(data_dir) / "ssh" / "id_ed25519"
    pub = key.with_suffix(".pub")
    with _making:
        if not pub.exists():
            key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = Path(tempfile.mkdtemp(dir=key.parent, prefix=".new-"))
            try:
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "scitq-server",
                                "-f", str(tmp / "key")], check=True, capture_output=True, timeout=30)
                if not pub.exists():
                    os.replace(tmp / "key", key)
                    os.replace(tmp / "key.pub", pub)
            except FileNotFoundError as exc:
                raise ProviderUnavailable("ssh-keygen is missing: install the OpenSSH client") from exc
            finally:
                for f in tmp.iterdir():
                    f.unlink()
                tmp.rmdir()
    return key, pub.read_text().strip()
