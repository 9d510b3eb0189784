"""PID 1 of a pod that tests/support/podrunner.py runs: sets up the pod's mounts, then acts as pause.

Run by ``unshare --pid --fork --mount-proc`` (a fresh PID and mount namespace), with the path of a JSON
plan written by the runner. In this mount namespace, for each container it gives the container's root
file system (a writable overlay of its image, prepared outside) what the runtime gives a container:
``/proc`` of the pod's PID namespace, a minimal ``/dev``, ``/etc/hosts``, the pod's volumes at the
mountPaths, and finally a read-only root when ``readOnlyRootFilesystem`` is set. It prints ``ready`` and
then only reaps orphans, like the pause container of a pod with ``shareProcessNamespace: true``.
Mounts made here vanish with the namespace when PID 1 dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def in_root(root: Path, path: str) -> Path:
    """``path`` inside ``root``, its symlinks resolved inside ``root`` too (``/var/run -> /run`` must
    not lead to the host's /run), creating missing directories as a runtime creates mount points."""
    current = root
    parts = [p for p in path.split("/") if p not in ("", ".")]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise RuntimeError(f"too many symlinks under {root} resolving {path}")
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            current = root if target.startswith("/") else current
            continue
        current = candidate
    return current


def mount_point(root: Path, path: str, *, is_file: bool = False) -> Path:
    target = in_root(root, path)
    if is_file:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    else:
        target.mkdir(parents=True, exist_ok=True)
    return target


def set_up_container(container: dict[str, Any], volumes: dict[str, Path], hosts: Path) -> None:
    root = Path(container["root"])
    mount("--bind", str(root), str(root))  # its own mount, so it can be made read-only below
    mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(mount_point(root, "/proc")))
    dev = mount_point(root, "/dev")
    mount("-t", "tmpfs", "-o", "nosuid,mode=755,size=64k", "dev", str(dev))
    for name in DEVICES:
        (dev / name).touch()
        mount("--bind", f"/dev/{name}", str(dev / name))
    (dev / "shm").mkdir()
    mount("-t", "tmpfs", "-o", "nosuid,nodev,mode=1777,size=64m", "shm", str(dev / "shm"))
    for index, name in enumerate(("stdin", "stdout", "stderr")):
        (dev / name).symlink_to(f"/proc/self/fd/{index}")
    (dev / "fd").symlink_to("/proc/self/fd")
    mount("--bind", str(hosts), str(mount_point(root, "/etc/hosts", is_file=True)))
    for volume_mount in container["volumeMounts"]:
        source = volumes[volume_mount["name"]] / volume_mount.get("subPath", "")
        target = mount_point(root, volume_mount["mountPath"], is_file=source.is_file())
        mount("--bind", str(source), str(target))
        if volume_mount.get("readOnly"):
            mount("-o", "remount,bind,ro", str(target))
    if container["readOnlyRootFilesystem"]:
        mount("-o", "remount,bind,ro", str(root))


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    volumes: dict[str, Path] = {}
    for name, volume in plan["volumes"].items():
        if "emptyDir" in volume:
            path = Path(plan["workdir"]) / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            size = volume["emptyDir"].get("sizeLimit")
            options = "mode=1777" + (f",size={size}" if size else "")
            mount("-t", "tmpfs", "-o", options, f"emptydir-{name}", str(path))
            volumes[name] = path
        else:
            volumes[name] = Path(volume["hostPath"])
    for container in plan["containers"]:
        set_up_container(container, volumes, Path(plan["hosts"]))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # orphans of the pod are reaped by the kernel
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
