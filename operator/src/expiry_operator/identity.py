"""Who this replica is and where it runs, for the Lease: from the downward API when in a pod."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from expiry import names

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_identity() -> str:
    """The pod's name; outside a pod, host and pid (unique among processes sharing one Lease)."""
    return os.environ.get(names.POD_NAME_ENV) or f"{socket.gethostname()}-{os.getpid()}"


def own_namespace() -> str:
    """The pod's namespace ($EXPIRY_POD_NAMESPACE, else the service account's), else ``default``."""
    namespace = os.environ.get(names.POD_NAMESPACE_ENV)
    if namespace:
        return namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"
