"""`pushwire health`: probe a node's `/ready` (or any URL) and answer with an exit code.

For container health checks and exec probes: it needs no curl, only the image's Python.
Without `--url` it probes this configuration's own port on the loopback address (TLS when
the config has `tls_cert`; the certificate is not checked then, it is our own process).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from .config import Config

WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def default_url(config: Config, path: str = "/ready") -> str:
    s = config.server
    host = "127.0.0.1" if s.host in WILDCARDS else s.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if s.tls_cert else "http"
    return f"{scheme}://{host}:{s.port}{path}"


def probe(url: str, timeout: float, verify: bool = True) -> tuple[bool, str]:
    """(healthy, one line saying why): healthy is a 2xx answer within `timeout` seconds."""
    context = None
    if url.startswith("https:") and not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            body = resp.read(512).decode("utf-8", "replace").strip()
            return True, f"{url}: {resp.status} {body}"
    except urllib.error.HTTPError as exc:
        body = exc.read(512).decode("utf-8", "replace").strip()
        return False, f"{url}: {exc.code} {body}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: unreachable: {reason}"
