"""The server's TLS: its own certificate authority, or a certificate given by the user.

At first start with TLS on, the server makes a CA in DATA_DIR/tls (ca.pem, and ca.key of mode
600) and a server certificate signed by it for the names and addresses its clients and hosts
use. The certificate is made again when a name is missing from it (a new --public-url) or it
nears its end; the CA stays, so hosts that pinned ca.pem keep trusting the server.
"""
import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scitq.errors import BadRequest

CA_DAYS = 3650          # the CA hosts pin: ten years
CERT_DAYS = 397         # the server certificate (what browsers accept at most)
RENEW_DAYS = 30         # made again when fewer days are left


def tls_dir(data_dir):
    return Path(data_dir) / "tls"


def ca_path(data_dir):
    return tls_dir(data_dir) / "ca.pem"


def _write_private(path, data):
    """A key file readable by its owner alone, from its first byte on."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def ensure_ca(data_dir):
    """(certificate, key) of the server's CA, made on first call."""
    d = tls_dir(data_dir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_file, key_file = d / "ca.pem", d / "ca.key"
    if cert_file.exists() and key_file.exists():
        return (x509.load_pem_x509_certificate(cert_file.read_bytes()),
                serialization.load_pem_private_key(key_file.read_bytes(), password=None))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "scitq"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"scitq CA {socket.gethostname()}"[:64])])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(key_file, _key_pem(key))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _san(names):
    entries, seen = [], set()
    for name in names:
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _covers(cert, wanted):
    try:
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(wanted) <= set(have) and cert.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_DAYS)


def ensure_server_cert(data_dir, names):
    """(cert file, key file) of a server certificate for `names` (host names and addresses),
    signed by the server's CA; made again when a name is missing or it nears its end."""
    ca_cert, ca_key = ensure_ca(data_dir)
    d = tls_dir(data_dir)
    cert_file, key_file = d / "server.pem", d / "server.key"
    wanted = _san(names)
    if cert_file.exists() and key_file.exists():
        if _covers(x509.load_pem_x509_certificate(cert_file.read_bytes()), wanted):
            return cert_file, key_file
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scitq server")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(key_file, _key_pem(key))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


def server_context(cert_file, key_file):
    """The server side's SSLContext: TLS 1.2 at least, the library's default ciphers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host):
    return host in ("0.0.0.0", "::", "[::]", "")


def setup(data_dir, host, names, enabled=None, cert=None, key=None):
    """(SSLContext or None, CA file the hosts pin or None). TLS is on when asked, else when
    the server serves an address other than loopback; a given cert and key (from a public CA:
    clients use their system store) or else a certificate of the server's own CA for `names`."""
    if enabled is None:
        enabled = bool(cert) or not is_loopback(host)
    if not enabled:
        return None, None
    if bool(cert) != bool(key):
        raise BadRequest("--tls-cert and --tls-key go together")
    if cert:
        try:
            return server_context(cert, key), None
        except (OSError, ssl.SSLError) as exc:
            raise BadRequest(f"cannot use the certificate {cert} with the key {key}: {exc}") from None
    local = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    cert_file, key_file = ensure_server_cert(data_dir, [*names, *([] if is_wildcard(host) else [host]), *local])
    return server_context(cert_file, key_file), ca_path(data_dir)
