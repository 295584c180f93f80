"""The server's own SSH key: put on every host it rents, used to bootstrap them."""
import subprocess
from pathlib import Path

from scitq.errors import ProviderUnavailable


def ensure_keypair(data_dir):
    """(private key path, public key text), made with ssh-keygen on first use."""
    key = Path(data_dir) / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "scitq-server",
                            "-f", str(key)], check=True, capture_output=True, timeout=30)
        except FileNotFoundError as exc:
            raise ProviderUnavailable("ssh-keygen is missing: install the OpenSSH client") from exc
    return key, key.with_suffix(".pub").read_text().strip()
