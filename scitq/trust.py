"""How clients of the server (the worker, the CLI and client, deploys) verify it over TLS."""
import os
import ssl


def client_context(ca=None, cadata=None):
    """An SSLContext that verifies the server: against `ca` (a file) or `cadata` (PEM text)
    alone when given, pinning the server's own CA; else against the system store."""
    ca = ca or None
    if ca is not None and not os.path.isfile(ca):
        raise FileNotFoundError(f"no CA certificate file {ca}")
    context = ssl.create_default_context(cafile=ca, cadata=cadata)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def verify_failure(exc):
    """The certificate error under a transport error (httpx wraps it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
