"""The node's pod network for the local cluster: one Linux bridge on this machine and one network
namespace per pod, joined to it by a veth pair, as a CNI bridge plugin does.

Each pod gets its own address in NODE_CIDR (a host-only network: the bridge has no uplink, so nothing
leaves this machine), so two operator replicas can both listen on the chart's ports and the API server
reaches the webhook at the pod's address through the Service's EndpointSlice. Pods reach the API server
at the bridge's address (the kubelet stand-in proxies it to the API server on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from pathlib import Path

BRIDGE = "expiry0"
NODE_CIDR = ipaddress.ip_network("10.250.0.0/24")
GATEWAY = str(next(NODE_CIDR.hosts()))
PREFIX = "expiry-pod-"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def bridge_up() -> None:
    if ip("link", "show", BRIDGE, check=False).returncode != 0:
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{GATEWAY}/{NODE_CIDR.prefixlen}", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


def pod_netns(index: int) -> tuple[str, str]:
    """Create the network namespace of the pod with this index; its name and address."""
    name = f"{PREFIX}{index}"
    address = str(NODE_CIDR.network_address + 1 + index)
    host_side, pod_side = f"expv{index}", f"expp{index}"
    remove_netns(name, host_side)
    ip("netns", "add", name)
    ip("link", "add", host_side, "type", "veth", "peer", "name", pod_side)
    ip("link", "set", host_side, "master", BRIDGE, "up")
    ip("link", "set", pod_side, "netns", name)
    ip("-n", name, "link", "set", pod_side, "name", "eth0")
    ip("-n", name, "addr", "add", f"{address}/{NODE_CIDR.prefixlen}", "dev", "eth0")
    ip("-n", name, "link", "set", "eth0", "up")
    ip("-n", name, "link", "set", "lo", "up")
    ip("-n", name, "route", "add", "default", "via", GATEWAY)
    return name, address


def remove_netns(name: str, host_side: str | None = None) -> None:
    if host_side is None and name.startswith(PREFIX):
        host_side = f"expv{name.removeprefix(PREFIX)}"
    if host_side:
        ip("link", "del", host_side, check=False)
    ip("netns", "del", name, check=False)


def all_down() -> None:
    """Remove every pod namespace and the bridge."""
    with contextlib.suppress(FileNotFoundError):
        for entry in Path("/run/netns").iterdir():
            if entry.name.startswith(PREFIX):
                remove_netns(entry.name)
    ip("link", "del", BRIDGE, check=False)
