"""A stand-in kubelet for one node of the local cluster (``expiry-node``): the pods the real scheduler
binds to it are really run, from the images' root file systems, by tests/support/podrunner.py.

What a kubelet does that expiry's claims depend on, done against the real API server:
- the Node object, Ready, with its Lease renewed (the node lifecycle controller watches it);
- each pod bound here: its own network namespace and address (tests/support/nodenet.py), its
  volumes made real (Secret, ConfigMap, the projected service account token from a TokenRequest bound
  to the pod, downward API, emptyDir), env from fieldRef/secretKeyRef/configMapKeyRef, the in-cluster
  API address (``KUBERNETES_SERVICE_HOST`` and the name ``kubernetes.default.svc`` in /etc/hosts, for
  want of a cluster DNS), then PodRunner (shared PID namespace, native sidecars, security contexts);
- pod status from what really happens: Running with the pod IP, readiness from the readinessProbe
  (HTTP GET), each container's exit code (a signal N is 128 + N, as runc reports it); Succeeded or
  Failed once the regular containers ended (restartPolicy Never/OnFailure; native sidecars are then
  stopped); the pod's conditions are kept as the API holds them (a sidecar's own condition stays);
- a pod being deleted: its preStop ``sleep`` hook, SIGTERM, the rest of its grace period, SIGKILL,
  then the final delete (grace 0).
Not done: preStop ``exec`` and ``httpGet`` hooks, container restarts, liveness probes, image pulls
(images must be in local buildah storage), resource limits, OOM kills (a test produces exit 137
without the condition by SIGKILLing the trainer).

Run: ``python -m tests.support.kubelet STATE_DIR`` (scripts/cluster starts it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support import nodenet
from tests.support.kube import STRATEGIC, ApiError, Kube, Obj
from tests.support.podrunner import PodRunner

NODE = "expiry-node"
API_PROXY_PORT = 443
# What a cluster's DNS answers for the API server's Service (there is no DNS server here: /etc/hosts).
CLUSTER_DNS = {
    nodenet.GATEWAY: [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
}
log = logging.getLogger("kubelet")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_code(returncode: int | None) -> int:
    return 128 - returncode if returncode is not None and returncode < 0 else int(returncode or 0)


@dataclass
class RunningPod:
    pod: Obj
    netns: str
    address: str
    workdir: Path
    runner: PodRunner | None = None
    started_at: str = field(default_factory=now)
    ready: dict[str, bool] = field(default_factory=dict)
    finished: bool = False
    stopping: bool = False
    error: str | None = None
    reported: str = ""
    # The conditions this kubelet reported last (type -> status, lastTransitionTime): it is their only
    # writer, so it knows when one changed without reading the pod back.
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)


class Kubelet:
    def __init__(self, kube: Kube, state: Path, version: str) -> None:
        self.kube = kube
        self.state = state
        self.version = version
        self.pods: dict[str, RunningPod] = {}
        self.lock = threading.Lock()
        self.next_index = 1
        self.stopping = threading.Event()

    # -- the node --------------------------------------------------------------------------------------

    def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE,
                "labels": {
                    "kubernetes.io/hostname": NODE,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "expiry.io/test-node": "real",
                },
            },
        }
        with contextlib.suppress(ApiError):
            self.kube.create("/api/v1/nodes", node)
        self.heartbeat()

    def heartbeat(self) -> None:
        stamp = now()
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": nodenet.GATEWAY},
                {"type": "Hostname", "address": NODE},
            ],
            "conditions": [
                {
                    "type": t,
                    "status": "False",
                    "reason": f"Kubelet{r}",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for t, r in (
                    ("MemoryPressure", "HasSufficientMemory"),
                    ("DiskPressure", "HasNoDiskPressure"),
                    ("PIDPressure", "HasSufficientPID"),
                )
            ]
            + [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            "nodeInfo": {
                "kubeletVersion": self.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "expiry-podrunner://0",
                "osImage": "",
                "kernelVersion": os.uname().release,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.kube.patch(f"/api/v1/nodes/{NODE}/status", {"status": status}, STRATEGIC)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": NODE, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": NODE,
                "leaseDurationSeconds": 40,
                "renewTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        try:
            self.kube.patch(f"{path}/{NODE}", {"spec": lease["spec"]})
        except ApiError as error:
            if error.status != 404:
                raise
            self.kube.create(path, lease)

    # -- the loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        self.register()
        last_beat = time.monotonic()
        while not self.stopping.is_set():
            try:
                self.sync()
                if time.monotonic() - last_beat > 10:
                    self.heartbeat()
                    last_beat = time.monotonic()
            except (ApiError, requests.RequestException) as error:
                log.warning("sync failed: %s", error)
            except Exception:  # a node that stops on one pod's surprise takes every test down with it
                log.exception("sync failed")
            self.stopping.wait(0.3)
        with self.lock:
            pods = list(self.pods.values())
        threads = [threading.Thread(target=self.stop_pod, args=(p, 5, False)) for p in pods]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    def sync(self) -> None:
        pods = self.kube.items("/api/v1/pods", fieldSelector=f"spec.nodeName={NODE}")
        seen = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            with self.lock:
                running = self.pods.get(uid)
            if running is None:
                if pod["metadata"].get("deletionTimestamp"):
                    self.kube.delete(self.pod_path(pod), gracePeriodSeconds=0)
                    continue
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                running = self.admit(pod)
                threading.Thread(target=self.start_pod, args=(running,), daemon=True).start()
                continue
            running.pod["metadata"] = pod["metadata"]
            if pod["metadata"].get("deletionTimestamp") and not running.stopping:
                running.stopping = True
                grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
                threading.Thread(target=self.stop_pod, args=(running, grace, True), daemon=True).start()
                continue
            self.report(running)
        with self.lock:
            gone = [uid for uid in self.pods if uid not in seen]
        for uid in gone:  # deleted behind our back (force delete): end its processes
            with self.lock:
                running = self.pods.get(uid)
            if running is not None and not running.stopping:
                running.stopping = True
                threading.Thread(target=self.stop_pod, args=(running, 0, False), daemon=True).start()

    def pod_path(self, pod: Obj) -> str:
        return f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"

    # -- starting a pod --------------------------------------------------------------------------------

    def admit(self, pod: Obj) -> RunningPod:
        with self.lock:
            index, self.next_index = self.next_index, self.next_index % 250 + 1
            while any(p.netns == f"{nodenet.PREFIX}{index}" for p in self.pods.values()):
                index = index % 250 + 1
            workdir = self.state / "pods" / pod["metadata"]["uid"]
            running = RunningPod(pod, f"{nodenet.PREFIX}{index}", "", workdir)
            self.pods[pod["metadata"]["uid"]] = running
        return running

    def start_pod(self, running: RunningPod) -> None:
        pod = running.pod
        try:
            running.netns, running.address = nodenet.pod_netns(
                int(running.netns.removeprefix(nodenet.PREFIX))
            )
            running.workdir.mkdir(parents=True, exist_ok=True)
            spec = self.resolve(pod, running)
            self.report(running, force=True)
            runner = PodRunner(
                spec, running.workdir, netns=running.netns, pod_ip=running.address, hosts=CLUSTER_DNS
            )
            running.runner = runner
            runner.start()
        except Exception as error:  # a pod that cannot start is reported, as a kubelet does
            log.exception("pod %s could not start", pod["metadata"]["name"])
            running.error = f"{type(error).__name__}: {error}"[:2000]
        self.report(running, force=True)

    def resolve(self, pod: Obj, running: RunningPod) -> Obj:
        """The pod as PodRunner runs it: volumes as host directories, env as plain values."""
        spec = json.loads(json.dumps(pod))
        meta, body = spec["metadata"], spec["spec"]
        volumes = []
        for volume in body.get("volumes", []):
            where = running.workdir / "volumes" / volume["name"]
            if "emptyDir" in volume or "hostPath" in volume:
                volumes.append(volume)
                continue
            where.mkdir(parents=True, exist_ok=True)
            self.fill(volume, where, pod, running)
            os.chmod(where, 0o755)
            volumes.append({"name": volume["name"], "hostPath": {"path": str(where)}})
        body["volumes"] = volumes
        for container in [*body.get("initContainers", []), *body["containers"]]:
            env = [
                {"name": "KUBERNETES_SERVICE_HOST", "value": nodenet.GATEWAY},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(API_PROXY_PORT)},
            ]
            for var in container.get("env", []):
                env.append({"name": var["name"], "value": self.env_value(var, pod, running)})
            container["env"] = env
        meta.setdefault("namespace", "default")
        return spec

    def env_value(self, var: Obj, pod: Obj, running: RunningPod) -> str:
        if "valueFrom" not in var:
            return str(var.get("value", ""))
        source = var["valueFrom"]
        namespace = pod["metadata"]["namespace"]
        if "fieldRef" in source:
            return self.field(source["fieldRef"]["fieldPath"], pod, running)
        for kind, key in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            if kind in source:
                ref = source[kind]
                try:
                    obj = self.kube.get(f"/api/v1/namespaces/{namespace}/{key}/{ref['name']}")
                except ApiError:
                    if ref.get("optional"):
                        return ""
                    raise
                value = obj.get("data", {}).get(ref["key"], "")
                return base64.b64decode(value).decode() if kind == "secretKeyRef" else str(value)
        if "resourceFieldRef" in source:
            return "0"
        raise ValueError(f"env {var['name']}: unsupported valueFrom {sorted(source)}")

    def field(self, path: str, pod: Obj, running: RunningPod) -> str:
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "status.podIP": running.address,
            "status.hostIP": nodenet.GATEWAY,
            "spec.nodeName": NODE,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        }
        if path in simple:
            return str(simple[path])
        for kind in ("labels", "annotations"):
            prefix = f"metadata.{kind}['"
            if path.startswith(prefix):
                return str(meta.get(kind, {}).get(path[len(prefix) : -2], ""))
        raise ValueError(f"unsupported downward-API field {path}")

    def fill(self, volume: Obj, where: Path, pod: Obj, running: RunningPod) -> None:
        namespace = pod["metadata"]["namespace"]
        sources: list[Obj] = volume["projected"].get("sources", []) if "projected" in volume else [volume]
        for source in sources:
            if "secret" in source or "configMap" in source:
                kind = "secret" if "secret" in source else "configMap"
                ref = source[kind]
                name = ref.get("secretName") or ref.get("name")
                path = (
                    f"/api/v1/namespaces/{namespace}/{'secrets' if kind == 'secret' else 'configmaps'}/{name}"
                )
                try:
                    obj = self.kube.get(path)
                except ApiError:
                    if ref.get("optional"):
                        continue
                    raise
                data = (
                    {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
                    if kind == "secret"
                    else {k: v.encode() for k, v in obj.get("data", {}).items()}
                )
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    self.write(where / item["path"], data[item["key"]])
            elif "serviceAccountToken" in source:
                token = self.kube.token(
                    namespace,
                    pod["spec"].get("serviceAccountName", "default"),
                    pod=pod,
                    seconds=source["serviceAccountToken"].get("expirationSeconds", 3607),
                )
                self.write(where / source["serviceAccountToken"]["path"], token.encode())
            elif "downwardAPI" in source:
                for item in source["downwardAPI"]["items"]:
                    self.write(
                        where / item["path"], self.field(item["fieldRef"]["fieldPath"], pod, running).encode()
                    )
            else:
                raise ValueError(f"volume {volume['name']}: unsupported source {sorted(source)}")

    @staticmethod
    def write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o644)

    # -- status ----------------------------------------------------------------------------------------

    def report(self, running: RunningPod, force: bool = False) -> None:
        """Write the pod's status when it changed (also ends the pod once its containers are done)."""
        pod, runner = running.pod, running.runner
        spec = pod["spec"]
        init_specs, specs = spec.get("initContainers", []), spec["containers"]
        statuses, init_statuses = [], []
        regular_done = True
        failed = running.error is not None
        for group, out in ((init_specs, init_statuses), (specs, statuses)):
            for c in group:
                started = runner.containers.get(c["name"]) if runner else None
                status: Obj = {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": c["image"],
                    "restartCount": 0,
                    "containerID": f"podrunner://{c['name']}",
                    "ready": False,
                    "started": False,
                }
                if started is None:
                    reason = "CreateContainerError" if running.error else "ContainerCreating"
                    status["state"] = {
                        "waiting": {"reason": reason, **({"message": running.error} if running.error else {})}
                    }
                    if group is specs:
                        regular_done = regular_done and running.error is not None
                elif started.process.poll() is None:
                    status["state"] = {"running": {"startedAt": running.started_at}}
                    status["started"] = True
                    status["ready"] = self.probe(running, c)
                    if group is specs:
                        regular_done = False
                else:
                    code = exit_code(started.process.returncode)
                    status["state"] = {
                        "terminated": {
                            "exitCode": code,
                            "reason": "Completed" if code == 0 else "Error",
                            "startedAt": running.started_at,
                            "finishedAt": now(),
                        }
                    }
                    if group is specs and code != 0:
                        failed = True
                out.append(status)
        phase = "Pending" if runner is None or (not runner.containers and not running.error) else "Running"
        terminal = (
            regular_done and spec.get("restartPolicy", "Always") != "Always"
        ) or running.error is not None
        if terminal:
            phase = "Failed" if failed else "Succeeded"
        ready = phase == "Running" and all(s["ready"] for s in statuses)
        stamp = now()
        conditions = [
            {"type": "PodReadyToStartContainers", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": str(ready)},
            {"type": "Ready", "status": str(ready)},
        ]
        status = {
            "phase": phase,
            "hostIP": nodenet.GATEWAY,
            "hostIPs": [{"ip": nodenet.GATEWAY}],
            "startTime": running.started_at,
            "containerStatuses": statuses,
            **({"initContainerStatuses": init_statuses} if init_statuses else {}),
        }
        if running.address:
            status["podIP"] = running.address
            status["podIPs"] = [{"ip": running.address}]
        key = json.dumps([status, conditions], sort_keys=True)
        if key == running.reported and not force:
            return
        for c in conditions:
            before = running.conditions.get(c["type"])
            c["lastTransitionTime"] = before[1] if before and before[0] == c["status"] else stamp
            running.conditions[c["type"]] = (c["status"], c["lastTransitionTime"])
        status["conditions"] = conditions
        # A strategic merge patch merges conditions by type: the ones other writers own (the sidecar's
        # ExpiryWorkersHung) are kept, as the real kubelet's status manager keeps them.
        self.kube.patch(f"{self.pod_path(pod)}/status", {"status": status}, STRATEGIC)
        running.reported = key
        if terminal and not running.finished:
            running.finished = True
            threading.Thread(target=self.stop_pod, args=(running, 30, False), daemon=True).start()

    def probe(self, running: RunningPod, container: Obj) -> bool:
        probe = container.get("readinessProbe", {}).get("httpGet")
        if probe is None:
            return True
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
        try:
            answer = requests.get(f"http://{running.address}:{port}{probe.get('path', '/')}", timeout=1)
        except requests.RequestException:
            return False
        return 200 <= answer.status_code < 400

    # -- stopping a pod --------------------------------------------------------------------------------

    def stop_pod(self, running: RunningPod, grace: float, delete: bool) -> None:
        """The preStop ``sleep`` hooks (the only kind run here), then SIGTERM, the rest of the grace
        period, SIGKILL."""
        if running.runner is not None:
            hooks = [
                float(c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))
                for c in running.pod["spec"]["containers"]
            ]
            pause = min(max(hooks, default=0.0), float(grace)) if delete else 0.0
            time.sleep(pause)
            with contextlib.suppress(Exception):
                running.runner.stop(grace=max(float(grace) - pause, 0.1))
        if running.finished and not delete:
            with contextlib.suppress(Exception):
                running.reported = ""
                self.report(running, force=True)
        nodenet.remove_netns(running.netns)
        shutil.rmtree(running.workdir / "volumes", ignore_errors=True)
        if delete:
            with contextlib.suppress(ApiError):
                self.kube.delete(self.pod_path(running.pod), gracePeriodSeconds=0)
        with self.lock:
            self.pods.pop(running.pod["metadata"]["uid"], None)


def proxy_api(server_port: int, stop: threading.Event) -> None:
    """Pods reach the API server at the node network's gateway: relay TCP to 127.0.0.1 (TLS untouched)."""
    listener = socket.create_server((nodenet.GATEWAY, API_PROXY_PORT), reuse_port=False)
    listener.settimeout(0.5)

    def pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        try:
            upstream = socket.create_connection(("127.0.0.1", server_port))
        except OSError as error:
            log.warning("API proxy: %s", error)
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("state", type=Path)
    parser.add_argument("--version", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ports = json.loads((args.state / "ports.json").read_text())
    kube = Kube.from_kubeconfig(args.state / "kubeconfig")
    kubelet = Kubelet(kube, args.state, args.version)
    signal.signal(signal.SIGTERM, lambda *_: kubelet.stopping.set())
    nodenet.bridge_up()
    threading.Thread(target=proxy_api, args=(ports["apiserver"], kubelet.stopping), daemon=True).start()
    kubelet.run()


if __name__ == "__main__":
    main()
