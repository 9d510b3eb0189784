"""Runs a Pod manifest (as ``expiry-operator inject`` outputs it) from its images' root file systems.

Not a container runtime: a faithful-enough pod for these tests. It does what a kubelet and runc do
that matters to expiry, with real kernel mechanisms, and nothing else:

- one PID namespace for the pod, as with ``shareProcessNamespace: true`` (always: a pod without it is
  run the same way), whose PID 1 reaps orphans as the pause container does (tests/support/podinit.py);
- each container in its own root file system: a writable overlay of its image from local buildah
  storage (``buildah from`` + ``buildah mount``, as a container's rootfs), read-only when
  ``readOnlyRootFilesystem``; ``/proc`` of the pod's PID namespace, a minimal ``/dev``, ``/etc/hosts``;
- volumes: ``emptyDir`` as one tmpfs per volume (``sizeLimit`` as its size), ``hostPath`` as a bind
  mount (tests use it where a cluster would mount a Secret or ConfigMap), at each container's
  ``mountPath`` (``subPath``: a file or directory inside the volume), read-only when the volumeMount
  says so;
- the process: ``command``/``args`` over the image's ENTRYPOINT/CMD, the image's env plus the
  container's (downward-API ``fieldRef`` values filled in: pod name, namespace, uid, labels,
  annotations, ``status.podIP``, ``spec.nodeName``: the pod's own, else ``localhost``), ``HOSTNAME``,
  ``HOME`` (from the image's passwd, else ``/``), ``workingDir``; ``runAsUser``/``runAsGroup`` (pod or
  container level, else the image's USER), ``runAsNonRoot`` refused for uid 0, supplementary groups,
  capabilities as ``securityContext.capabilities`` leaves them (the runtime's default set otherwise),
  ``no_new_privs`` unless ``allowPrivilegeEscalation`` is true (tests/support/podexec.py);
- start order: init containers one at a time; a native sidecar (an init container with
  ``restartPolicy: Always``) is started and must pass its ``startupProbe`` (httpGet) before the next
  one starts, a plain init container must exit 0; then the containers, in order, without waiting
  (the legacy sidecar order, where the sidecar is one of them); ``stop``: SIGTERM to the containers,
  then to the native sidecars in reverse order, SIGKILL after the grace period.

The network: the host's (as with ``hostNetwork: true``: tests choose free ports), or a network
namespace of the pod's own made by the caller (tests/support/nodenet.py, for the local cluster's node).
Not done: cgroups and resources, seccomp, restarts, liveness probes, image pulls (images must be in
local storage), Secret/ConfigMap/projected volumes (use ``hostPath``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
ROOT_PREFIX = "expiry-pod-"  # buildah container names: expiry-pod-<runner's pid>-<random>-<container>
# The container runtime's default capabilities (containerd, CRI-O), by capability number.
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
    "SYS_PTRACE": 19, "SYS_ADMIN": 21, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}  # fmt: skip
DEFAULT_CAPABILITIES = {
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
    "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}  # fmt: skip
QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|k|M|G)?$")
UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True).stdout.strip()


def image_config(image: str) -> dict[str, Any]:
    """The OCI config of a local image: Entrypoint, Cmd, Env, User, WorkingDir."""
    inspected = json.loads(buildah("inspect", "--type", "image", image))
    config: dict[str, Any] = inspected["OCIv1"].get("config", {})
    return config


def bytes_of(quantity: str) -> int:
    match = QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"unsupported quantity {quantity!r}")
    return int(match.group(1)) * UNITS[match.group(2)]


@dataclass
class Container:
    """A started container: its main process (host pid) and log."""

    name: str
    native_sidecar: bool
    process: subprocess.Popen[bytes]  # nsenter's; it exits with the container's status
    log_path: Path
    host_pid: int
    pidfd: int
    """Signals go through it: once the process has exited they reach nobody, never a process that reused
    its pid (pid_max may be 32768, and a test run starts tens of thousands of processes)."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, str]:
        """The container process's /proc/<pid>/status fields (Uid, Gid, CapEff, NSpid, ...)."""
        lines = Path(f"/proc/{self.host_pid}/status").read_text().splitlines()
        return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}

    def signal(self, signum: int) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)


class PodRunner:
    """``PodRunner(pod, workdir).start()`` runs the pod; ``stop()`` ends it (also on ``__exit__``)."""

    def __init__(
        self,
        pod: dict[str, Any],
        workdir: Path,
        *,
        startup_timeout: float = 60,
        netns: str | None = None,
        pod_ip: str = "127.0.0.1",
        hosts: dict[str, list[str]] | None = None,
    ) -> None:
        """``netns``: a network namespace (``ip netns``) of the pod's own, whose address is ``pod_ip``;
        by default the pod shares this host's network."""
        self.pod = pod
        self.netns = netns
        self.pod_ip = pod_ip
        self.hosts = hosts or {}
        """More /etc/hosts lines (address -> names), as a cluster's DNS would answer them."""
        self.spec: dict[str, Any] = pod["spec"]
        self.workdir = workdir
        self.startup_timeout = startup_timeout
        self.containers: dict[str, Container] = {}
        self._roots: dict[str, tuple[str, Path]] = {}  # container name -> (buildah container, rootfs)
        self._init: subprocess.Popen[str] | None = None
        self.init_host_pid = 0
        self._init_pidfd: int | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> PodRunner:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- the pod ----------------------------------------------------------------------------------

    def all_containers(self) -> list[dict[str, Any]]:
        return [*self.spec.get("initContainers", []), *self.spec["containers"]]

    def start(self) -> None:
        remove_stale_roots()
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        for container in self.all_containers():
            name = f"{ROOT_PREFIX}{tag}-{container['name']}"
            buildah("from", "--pull=never", "--name", name, container["image"])
            self._roots[container["name"]] = (name, Path(buildah("mount", name)))
        self._start_pod()
        for container in self.spec.get("initContainers", []):
            started = self._run(container)
            if container.get("restartPolicy") == "Always":
                self._wait_started(started, container)
            else:
                code = started.wait(self.startup_timeout)
                if code != 0:
                    raise RuntimeError(f"init container {started.name} exited {code}:\n{started.log()}")
        for container in self.spec["containers"]:
            self._run(container)

    def _start_pod(self) -> None:
        hosts = self.workdir / "hosts"
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost", f"{self.pod_ip}\t{self.pod['metadata']['name']}"]
        aliases = {**self.hosts, **{a["ip"]: a["hostnames"] for a in self.spec.get("hostAliases", [])}}
        lines += [f"{address}\t{' '.join(names)}" for address, names in aliases.items()]
        hosts.write_text("\n".join(lines) + "\n")
        volumes: dict[str, dict[str, Any]] = {}
        for volume in self.spec.get("volumes", []):
            if "emptyDir" in volume:
                limit = (volume["emptyDir"] or {}).get("sizeLimit")
                volumes[volume["name"]] = {"emptyDir": {"sizeLimit": bytes_of(limit) if limit else None}}
            elif "hostPath" in volume:
                volumes[volume["name"]] = {"hostPath": volume["hostPath"]["path"]}
            else:
                raise ValueError(f"volume {volume['name']}: only emptyDir and hostPath are run here")
        plan = {
            "workdir": str(self.workdir),
            "hosts": str(hosts),
            "volumes": volumes,
            "containers": [
                {
                    "root": str(self._roots[c["name"]][1]),
                    "readOnlyRootFilesystem": bool(
                        c.get("securityContext", {}).get("readOnlyRootFilesystem")
                    ),
                    "volumeMounts": c.get("volumeMounts", []),
                }
                for c in self.all_containers()
            ],
        }
        plan_path = self.workdir / "pod-plan.json"
        plan_path.write_text(json.dumps(plan))
        init = [sys.executable, str(HERE / "podinit.py"), str(plan_path)]
        init_log = self.workdir / "pod-init.log"
        with init_log.open("w") as log:
            self._init = subprocess.Popen(
                [
                    *(["ip", "netns", "exec", self.netns] if self.netns else []),
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    *init,
                ],
                stdout=subprocess.PIPE,
                stderr=log,  # also unshare's complaint about the SIGKILL that ends the pod
                text=True,
                start_new_session=True,
            )
        assert self._init.stdout is not None
        if self._init.stdout.readline().strip() != "ready":
            self._init.wait(10)
            raise RuntimeError(f"the pod's mounts could not be set up:\n{init_log.read_text()}")
        self.init_host_pid = _children(self._init.pid)[0]
        self._init_pidfd = os.pidfd_open(self.init_host_pid)

    # --- one container ----------------------------------------------------------------------------

    def _run(self, container: dict[str, Any]) -> Container:
        name = container["name"]
        spec = self.exec_spec(container)
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["nsenter", f"--target={self.init_host_pid}", "--pid", "--mount",
                 *(["--net"] if self.netns else []), "--",
                 sys.executable, str(HERE / "podexec.py"), json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            host_pid = _wait_for_child(process)
            pidfd = os.pidfd_open(host_pid)  # nsenter, its parent, reaps it only once it exits
        except (RuntimeError, ProcessLookupError) as error:
            raise RuntimeError(
                f"container {name}: {error}:\n{log_path.read_text(errors='replace')}"
            ) from None
        started = Container(
            name=name,
            native_sidecar=container.get("restartPolicy") == "Always",
            process=process,
            log_path=log_path,
            host_pid=host_pid,
            pidfd=pidfd,
        )
        self.containers[name] = started
        return started

    def exec_spec(self, container: dict[str, Any]) -> dict[str, Any]:
        """What podexec.py needs to start ``container`` as the kubelet and runc would."""
        image = image_config(container["image"])
        if "command" in container:  # command replaces ENTRYPOINT and CMD; args replace CMD
            argv = [*container["command"], *container.get("args", [])]
        else:
            argv = [*(image.get("Entrypoint") or []), *container.get("args", image.get("Cmd") or [])]
        if not argv:
            raise ValueError(f"container {container['name']}: no command and no image ENTRYPOINT/CMD")
        env = dict(item.split("=", 1) for item in image.get("Env") or [])
        env["HOSTNAME"] = self.pod["metadata"]["name"]
        for var in container.get("env", []):
            env[var["name"]] = (
                var["value"] if "value" in var else self.field(var["valueFrom"]["fieldRef"]["fieldPath"])
            )
        pod_security = self.spec.get("securityContext", {})
        security = {**pod_security, **container.get("securityContext", {})}
        image_uid, image_gid = _image_user(image.get("User") or "0")
        uid = int(security.get("runAsUser", image_uid))
        gid = int(security.get("runAsGroup", image_gid if "runAsUser" not in security else 0))
        if security.get("runAsNonRoot") and uid == 0:
            raise RuntimeError(f"container {container['name']}: runAsNonRoot and the user is root")
        groups = [*pod_security.get("supplementalGroups", [])]
        if "fsGroup" in pod_security:
            groups.append(pod_security["fsGroup"])
        env.setdefault("HOME", self._home(container["name"], uid))
        caps = security.get("capabilities", {})
        dropped = {name.removeprefix("CAP_") for name in caps.get("drop", [])}
        kept = set() if "ALL" in dropped else DEFAULT_CAPABILITIES - dropped
        kept |= {name.removeprefix("CAP_") for name in caps.get("add", [])}
        return {
            "root": str(self._roots[container["name"]][1]),
            "argv": argv,
            "env": env,
            "workingDir": container.get("workingDir") or image.get("WorkingDir") or "/",
            "uid": uid,
            "gid": gid,
            "groups": sorted(set(groups)),
            "capabilities": sorted(CAPABILITIES[name] for name in kept),
            "noNewPrivs": not security.get("allowPrivilegeEscalation", True),
        }

    def _home(self, name: str, uid: int) -> str:
        """HOME as runc sets it when the image does not: the user's passwd entry in the image, else /."""
        passwd = self._roots[name][1] / "etc/passwd"
        for line in passwd.read_text().splitlines() if passwd.is_file() else []:
            fields = line.split(":")
            if len(fields) > 5 and fields[2] == str(uid):
                return fields[5]
        return "/"

    def field(self, path: str) -> str:
        """A downward-API ``fieldRef`` value."""
        metadata = self.pod["metadata"]
        simple = {
            "metadata.name": metadata.get("name", ""),
            "metadata.namespace": metadata.get("namespace", "default"),
            "metadata.uid": metadata.get("uid", ""),
            "status.podIP": self.pod_ip,
            "status.hostIP": "127.0.0.1",
            "spec.nodeName": self.spec.get("nodeName") or "localhost",  # bound to a node, or this machine
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str(metadata.get(match.group(1), {}).get(match.group(2), ""))
        raise ValueError(f"unsupported downward-API field {path}")

    def _wait_started(self, container: Container, spec: dict[str, Any]) -> None:
        """Wait for the startupProbe (httpGet on this host) to pass, as the kubelet does."""
        probe = spec.get("startupProbe", {}).get("httpGet")
        if probe is None:
            return
        port = probe["port"]
        if isinstance(port, str):  # a named port
            port = next(p["containerPort"] for p in spec.get("ports", []) if p.get("name") == port)
        url = f"http://{self.pod_ip}:{port}{probe.get('path', '/')}"
        give_up = time.monotonic() + self.startup_timeout
        while time.monotonic() < give_up:
            if container.process.poll() is not None:
                raise RuntimeError(
                    f"{container.name} exited {container.process.returncode}:\n{container.log()}"
                )
            with contextlib.suppress(requests.RequestException):
                if 200 <= requests.get(url, timeout=1).status_code < 400:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{container.name}: startupProbe {url} did not pass:\n{container.log()}")

    # --- the end ----------------------------------------------------------------------------------

    def stop(self, grace: float = 30) -> dict[str, int | None]:
        """End the pod as the kubelet does; returns each container's exit status (negative: signal)."""
        regular = [c for c in self.containers.values() if not c.native_sidecar]
        sidecars = [c for c in self.containers.values() if c.native_sidecar]
        for group in (regular, *([c] for c in reversed(sidecars))):
            for container in group:
                if container.process.poll() is None:
                    container.signal(signal.SIGTERM)
            for container in group:
                try:
                    container.wait(grace)
                except subprocess.TimeoutExpired:
                    container.signal(signal.SIGKILL)
                    container.wait(10)
        if self._init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # the kernel ends what is left in the pod
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
            os.close(self._init_pidfd)
            self._init_pidfd = None
        if self._init is not None:
            self._init.wait(10)
        for container in self.containers.values():
            if container.pidfd >= 0:  # a second stop finds them closed
                os.close(container.pidfd)
                container.pidfd = -1
        if self._init is not None and self._init.stdout:
            self._init.stdout.close()
        for name, _ in self._roots.values():
            subprocess.run(["buildah", "rm", name], check=False, capture_output=True)
        self._roots.clear()
        return {name: c.process.returncode for name, c in self.containers.items()}


def remove_stale_roots() -> None:
    """Remove the root file systems that runners of processes gone (a test killed by its timeout) left."""
    names = buildah("containers", "--noheading", "--format", "{{.ContainerName}}").split()
    for name in names:
        if name.startswith(ROOT_PREFIX):
            owner = int(name.removeprefix(ROOT_PREFIX).split("-")[0])
            if not Path(f"/proc/{owner}").exists():
                subprocess.run(["buildah", "rm", name], check=False, capture_output=True)


def _image_user(user: str) -> tuple[int, int]:
    """The image's USER as numbers (names other than root are not looked up here)."""
    name, _, group = user.partition(":")
    uid = 0 if name in ("", "root") else int(name)
    gid = int(group) if group else uid
    return uid, gid


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait_for_child(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The pid of the process nsenter forked, once it has become the container's main process (podexec.py
    has exec'd the command: as runc's ``start`` returns), so its user and capabilities are final."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            children = _children(process.pid)
            # The cmdline reads empty while the child is inside execve (its new memory has no arguments
            # laid out yet): that is neither nsenter's nor podexec.py's, but not the command's either.
            cmdline = Path(f"/proc/{children[0]}/cmdline").read_bytes() if children else b""
            if cmdline and b"podexec.py" not in cmdline:
                return children[0]
        if process.poll() is not None:
            raise RuntimeError(f"the container exited {process.returncode} before its command started")
        time.sleep(0.005)
    raise RuntimeError("the container's command did not start")
