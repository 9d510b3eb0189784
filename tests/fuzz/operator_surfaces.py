"""The operator's input surfaces: ``inject -f``, the webhook over TLS, the config file, the annotations."""

from __future__ import annotations

import contextlib
import copy
import http.client
import itertools
import json
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml
from hypothesis import strategies as st

from expiry import names
from expiry_operator import cli, options
from expiry_operator.injection import Denied, Injected, Skipped, admit
from expiry_operator.settings import Settings
from expiry_operator.webhook import MAX_BODY_BYTES
from expiry_sidecar import cli as sidecar_cli
from tests.fuzz.harness import (
    Check,
    Notes,
    Refusal,
    Run,
    Surface,
    Violation,
    cli_outcome,
    deep_recursion,
    run_main,
    stateless,
)
from tests.fuzz.mutations import NASTY_STRINGS, mutated, nested
from tests.fuzz.pod_schema import schema_errors, schema_pods
from tests.operator import pod_corpus
from tests.operator.operator_harness import admission_review, running_operator

REPO = Path(__file__).resolve().parents[2]
CORPUS = [
    *pod_corpus.INJECTED_CASES.values(),
    *pod_corpus.SKIPPED_CASES.values(),
    *(pod for pod, _ in pod_corpus.DENIED_CASES.values()),
]
EXAMPLES = [
    document
    for path in sorted((REPO / "examples").rglob("*.yaml"))
    for document in yaml.safe_load_all(path.read_text())
    if isinstance(document, dict)
]
PODS = st.sampled_from(CORPUS) | schema_pods()


@st.composite
def _workload(draw: st.DrawFn) -> dict[str, Any]:
    """A corpus or schema pod as the template of a workload kind ``inject`` knows."""
    pod = copy.deepcopy(draw(PODS))
    template = {"metadata": pod["metadata"], "spec": pod["spec"]}
    kind = draw(st.sampled_from(["Deployment", "Job", "StatefulSet"]))
    api = "batch/v1" if kind == "Job" else "apps/v1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "w"}, "spec": {"template": template}}


MANIFESTS = PODS | st.sampled_from(EXAMPLES) | _workload()


def _classify(message: str) -> str:
    if "not a pod:" in message:
        return "denied: malformed pod"
    if "annotation expiry.io/" in message:
        return "denied: annotation value"
    return "denied: pod expiry refuses"


WOULD_DENY = Refusal("expiry-operator: admission would deny ", _classify)
"""``inject`` refuses a pod admission would deny: exit 2, the denial in one line."""


# -- inject -f ----------------------------------------------------------------------------------


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml for the fuzzer's own writing and reading, when PyYAML has it (the product's parser is fuzzed,
not these)."""


def _serialize(documents: list[Any], form: str) -> bytes:
    with deep_recursion():
        if form == "yaml":
            try:
                return yaml.dump_all(documents, Dumper=_DUMPER, sort_keys=False).encode()
            except RecursionError:
                pass
        return "\n".join(json.dumps(document) for document in documents).encode()


INJECT_INPUTS = st.one_of(
    st.tuples(st.lists(MANIFESTS, min_size=1, max_size=2), st.sampled_from(["yaml", "json"])),
    st.tuples(st.lists(mutated(MANIFESTS), min_size=1, max_size=2), st.sampled_from(["yaml", "json"])),
    st.binary(max_size=300),
    st.sampled_from([b"\xff\xfe{", b"kind: Pod\nmetadata: \xc3\x28\n", b"[" * 1200, b"a: &a [*a]\n"]),
)


def _pods_of(documents: list[Any]) -> list[Any]:
    return [
        d for d in documents if isinstance(d, dict) and d.get("kind") == "Pod" and d.get("apiVersion") == "v1"
    ]


def _check_inject(path: Path, value: Any) -> str:
    data = value if isinstance(value, bytes) else _serialize(*value)
    path.write_bytes(data)
    form = "yaml" if isinstance(value, bytes) else value[1]
    return cli_outcome(
        cli.main,
        ["inject", "-f", str(path), "-o", form],
        lambda run: _check_injected_output(run, value),
        [WOULD_DENY, Refusal(f"expiry-operator: {path}: ", lambda _: "refused: not a manifest (exit 2)")],
    )


def _check_injected_output(run: Run, value: Any) -> str:
    if isinstance(value, bytes):
        return "accepted: no pod"
    documents, form = value
    if form == "json":  # one object, or a List of several
        loaded = json.loads(run.out)
        output = loaded["items"] if loaded.get("kind") == "List" else [loaded]
    else:
        output = list(yaml.load_all(run.out, Loader=_LOADER))
    before, after = _pods_of(documents), _pods_of(output)
    if len(before) != len(after):
        return "accepted: workloads"
    for original, result in zip(before, after, strict=True):
        added = schema_errors(result) - schema_errors(original)
        if added:
            raise Violation(f"injection made the pod break the Pod schema: {sorted(added)[:3]}")
    changed = any(names.STATUS_ANNOTATION in str(result.get("metadata")) for result in after)
    return "injected" if changed else "accepted unchanged"


@contextlib.contextmanager
def _inject_session(workdir: Path, _notes: Notes) -> Iterator[Check]:
    path = workdir / "manifest.yaml"
    yield lambda value: _check_inject(path, value)


INJECT = Surface(
    "inject",
    "`expiry-operator inject -f` (main() in-process): corpus, example and schema-generated manifests, "
    "mutated; raw bytes",
    INJECT_INPUTS,
    _inject_session,
)


# -- the webhook over TLS ----------------------------------------------------------------------

BIG = 3 * 1024 * 1024
BIG_SHARE = 50
"""One input in this many is a big body instead of the drawn one (the bodies in turn): a strategy would
draw them rarely and unevenly, and they are what could make the operator's memory grow."""


def _review_of_size(size: int) -> bytes:
    """A well-formed AdmissionReview of an opted-in pod, padded by an annotation to exactly ``size`` bytes."""
    pod = copy.deepcopy(pod_corpus.INJECTED_CASES["jobset"])
    pod["metadata"]["annotations"]["padding"] = ""
    review = admission_review(pod)
    pod["metadata"]["annotations"]["padding"] = "x" * (size - len(orjson.dumps(review)))
    body = orjson.dumps(review)
    assert len(body) == size
    return body


def _big_bodies() -> list[tuple[str, bytes]]:
    """(label, body): 3 MiB of every kind, and well-formed reviews at and around the 8 MiB limit."""
    return [
        ("3 MiB review", _review_of_size(BIG)),  # injected
        ("3 MiB JSON list", b"[" + b"0," * (BIG // 2) + b"0]"),
        ("3 MiB white space", b" " * BIG + b"{}"),
        ("3 MiB not UTF-8", b"\xff" * BIG),
        ("3 MiB nesting", b"{" * BIG),
        ("review 1 KiB under the limit", _review_of_size(MAX_BODY_BYTES - 1024)),  # injected
        ("review at the limit", _review_of_size(MAX_BODY_BYTES)),  # injected
        ("review 1 byte over the limit", _review_of_size(MAX_BODY_BYTES + 1)),  # 413
        ("9 MiB of zeros", b"0" * (9 * 1024 * 1024)),  # 413
    ]


def _raw(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    with deep_recursion():  # orjson writes 255 levels at most
        return json.dumps(value).encode()


@st.composite
def _reviews(draw: st.DrawFn) -> Any:
    review = admission_review({"metadata": {"name": "fuzz"}})
    review["request"]["object"] = draw(PODS | mutated(PODS))
    return review


def _deep_review(depth: int) -> dict[str, Any]:
    review = admission_review(copy.deepcopy(pod_corpus.INJECTED_CASES["jobset"]))
    review["request"]["object"]["spec"]["containers"][0]["args"] = nested(depth)
    return review


WEBHOOK_INPUTS = st.one_of(
    _reviews(),
    mutated(_reviews()),
    st.builds(lambda r: json.dumps(r).encode()[: len(json.dumps(r)) // 2], _reviews()),  # truncated
    st.binary(max_size=200),
    st.sampled_from([b"\xff\xfe\xfd", b'{"kind": "\xc3\x28"}', b"[" * 5000, b"null", b"{}"]),
    st.sampled_from([80, 500, 1000]).map(_deep_review),
)


class _Client:
    """One keep-alive HTTPS connection to the operator, verified against the test CA; re-opened
    when the server closed it (it does after an error status)."""

    def __init__(self, port: int, ca: Path) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca))
        self.connection = self._open()

    def _open(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=60)

    def post(self, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.connection.request(
                    "POST", "/expiry-inject", body=body, headers={"Content-Type": "application/json"}
                )
                response = self.connection.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.connection.close()
                    self.connection = self._open()
                return response.status, data
            except (OSError, http.client.HTTPException):
                self.connection.close()
                self.connection = self._open()
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _answer(client: _Client, alive: Any, body: bytes, value: Any) -> str:
    try:
        status, data = client.post(body)
    except (OSError, http.client.HTTPException) as e:
        raise Violation(f"no answer ({e!r}); operator alive: {alive()}") from None
    if status >= 500:
        raise Violation(f"HTTP {status}: {data[:300]!r}")
    if status != 200:
        if not data.strip():
            raise Violation(f"HTTP {status} without a reason")
        return f"HTTP {status}"
    review = json.loads(data)
    response = review["response"]
    sent_uid = value.get("request", {}).get("uid") if isinstance(value, dict) else None
    if isinstance(sent_uid, str) and response["uid"] != sent_uid:
        raise Violation(f"answer for uid {response['uid']!r}, asked {sent_uid!r}")
    if response["allowed"]:
        return "200 allowed, patched" if "patch" in response else "200 allowed, unchanged"
    code, message = response["status"].get("code", 0), response["status"].get("message", "")
    if code >= 500 or not message:
        raise Violation(f"denied with code {code} and message {message!r}")
    return f"200 denied {code}"


@contextlib.contextmanager
def _webhook_session(workdir: Path, notes: Notes) -> Iterator[Check]:
    with running_operator(workdir) as operator:
        client = _Client(operator.webhook_port, operator.tls.ca)
        big = _big_bodies()
        sent = itertools.count(1)

        def alive() -> bool:
            return operator._process is not None and operator._process.poll() is None

        def check(value: Any) -> str:
            number = next(sent)
            try:
                if number % BIG_SHARE:
                    outcome = _answer(client, alive, _raw(value), value)
                else:  # this input is a big body instead
                    label, body = big[(number // BIG_SHARE - 1) % len(big)]
                    outcome = f"{_answer(client, alive, body, None)} ({label})"
            except Violation as e:  # with the operator's own account of it
                raise Violation(f"{e}; the operator's log ends: {operator.log()[-1500:]}") from None
            if not alive():
                raise Violation(f"the operator exited:\n{operator.log()[-2000:]}")
            return outcome

        notes["operator RSS at start"] = f"{rss_kib(operator.pid) / 1024:.0f} MiB"
        yield check
        if not alive():
            raise Violation(f"the operator exited:\n{operator.log()[-2000:]}")
        notes["operator RSS after the run"] = f"{rss_kib(operator.pid) / 1024:.0f} MiB"
        notes["operator peak RSS"] = f"{rss_kib(operator.pid, 'VmHWM') / 1024:.0f} MiB"
        served = check(admission_review(copy.deepcopy(pod_corpus.INJECTED_CASES["jobset"])))
        if served != "200 allowed, patched":
            raise Violation(f"after the run, a good pod got {served}")
        notes["after the run"] = "alive, and injects a good pod"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """The process's resident set (``VmHWM``: its peak), from /proc (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


WEBHOOK = Surface(
    "webhook",
    "the real operator's webhook over TLS: AdmissionReviews of corpus/schema pods, mutated anywhere; "
    "truncated, non-UTF-8, deep (80/500/1000/5000 levels); one input in 50 a big body (3 MiB of five "
    "kinds, reviews 1 KiB under, at and 1 byte over the 8 MiB limit, 9 MiB)",
    WEBHOOK_INPUTS,
    _webhook_session,
)


# -- the operator's config file ------------------------------------------------------------------

CONFIG = {  # every key, as the chart renders it
    "sidecar": {
        "image": "ghcr.io/expiry-io/expiry-sidecar:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "metricsPort": 9464,
        "nativeSidecar": "auto",
        "killSignal": "",
        "escalateAfter": 10,
        "stackDumps": "off",
        "events": True,
        "podCondition": False,
        "mode": "enforce",
        "deadlines": "requested",
        "adaptiveFactor": 5,
        "adaptiveMinSamples": 20,
        "adaptiveFloor": 60,
    },
    "webhook": {"port": 8443, "certFile": "/etc/expiry/tls/tls.crt", "keyFile": "/etc/expiry/tls/tls.key"},
    "health": {"port": 8080},
    "metrics": {"port": 9465},
    "unprotectedPods": {"watch": True},
    "hangReports": {"enabled": True, "window": 5, "maxSpan": 60},
    "leaderElection": {"leaseName": "expiry", "leaseDuration": 15, "renewDeadline": 10, "retryPeriod": 2},
}
CONFIG_INPUTS = st.one_of(
    st.tuples(mutated(st.just(CONFIG)), st.sampled_from(["yaml", "json"])),
    st.binary(max_size=200),
    st.sampled_from([b"\xff\xfe", b"sidecar: \xc3\x28\n", b"[" * 1200, b"a: &a [*a]\n", b"sidecar: {a"]),
)


@contextlib.contextmanager
def _config_session(workdir: Path, _notes: Notes) -> Iterator[Check]:
    manifest, config = workdir / "pod.yaml", workdir / "operator.yaml"
    manifest.write_text(yaml.safe_dump(pod_corpus.INJECTED_CASES["jobset"]))

    def check(value: Any) -> str:
        config.write_bytes(value if isinstance(value, bytes) else _serialize([value[0]], value[1]))
        return cli_outcome(
            cli.main,
            ["inject", "-f", str(manifest), "--config", str(config)],
            lambda _: "accepted",
            [WOULD_DENY, Refusal("expiry-operator: ", lambda _: "refused: one line (exit 2)")],
        )

    yield check


CONFIG_FILE = Surface(
    "config",
    "the operator's config file (`inject --config`, the loader `run` uses): every key of the chart's "
    "config, mutated; raw bytes",
    CONFIG_INPUTS,
    _config_session,
)


# -- per-pod annotations (the option table), and what the sidecar makes of the flags they become ---

OPTION_KEYS = sorted(options._KNOWN - options.OWN_ANNOTATIONS)  # the option table: every option there is
PLAUSIBLE = st.sampled_from(
    [
        *("true", "false", "True", "enforce", "observe", "requested", "adaptive", "auto", "off", "client"),
        *("py-spy", "SIGTERM", "TERM", "sigusr1", "15", "0", "1", "2.5", "-1", "1e309", "1e308", "100m"),
        *("1Gi", "trainer", "trainer,sidecar", "trainer,", " 5", "0.0000001", "9" * 30, "1_000", "+3"),
    ]
)
VALUES = st.one_of(PLAUSIBLE, PLAUSIBLE, PLAUSIBLE, PLAUSIBLE, NASTY_STRINGS, st.text(max_size=10))


@st.composite
def _annotated(draw: st.DrawFn) -> dict[str, Any]:
    pod = copy.deepcopy(pod_corpus.INJECTED_CASES[draw(st.sampled_from(["jobset", "restricted"]))])
    keys = draw(st.lists(st.sampled_from(OPTION_KEYS), min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 9)) == 0:
        keys.append(f"{names.ANNOTATION_PREFIX}{draw(st.text(max_size=10))}")
    pod["metadata"]["annotations"].update({key: draw(VALUES) for key in keys})
    return pod


def _sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    return next(
        c
        for c in [*spec.get("containers", []), *spec.get("initContainers", [])]
        if c["name"] == names.SIDECAR_CONTAINER
    )


def _check_annotations(value: dict[str, Any]) -> str:
    annotations = value["metadata"]["annotations"]
    outcome = admit(value, Settings().sidecar, native_sidecars_supported=True)
    if isinstance(outcome, Denied):
        ours = [key for key in annotations if key.startswith(names.ANNOTATION_PREFIX)]
        if outcome.code != 400 or not any(key in outcome.message for key in ours):
            raise Violation(f"denial names no annotation of the pod: {outcome}")
        return "denied: names the annotation"
    if isinstance(outcome, Skipped):
        raise Violation(f"an opted-in pod was skipped: {outcome}")
    assert isinstance(outcome, Injected)
    args = _sidecar_of(outcome.pod)["args"]
    run = run_main(_sidecar_would_start, args)
    if run.status != 0:
        raise Violation(f"the operator wrote sidecar flags the sidecar refuses: {args}: {run.err!r}")
    return "injected: the sidecar accepts its flags"


def _sidecar_would_start(argv: Sequence[str]) -> int:
    """What the real sidecar CLI does with ``argv`` before it serves: parse, build its options."""
    sidecar_cli.options_from(sidecar_cli.parser().parse_args(argv)).policy()
    return 0


ANNOTATIONS = Surface(
    "annotations",
    "per-pod `expiry.io/` options (every key of options.py's table, plausible and hostile values); "
    "each injected sidecar's flags parsed by the real sidecar CLI",
    _annotated(),
    stateless(_check_annotations),
)

SURFACES = (INJECT, WEBHOOK, CONFIG_FILE, ANNOTATIONS)
