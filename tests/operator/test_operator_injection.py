"""The injection core over the pod corpus: valid, complete, idempotent, and no weaker under PSS."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from expiry import names
from expiry_operator import record
from expiry_operator.injection import Denied, Injected, Skipped, admit
from expiry_operator.options import RECORD_ANNOTATION
from expiry_operator.settings import SidecarSettings, settings_from_dict
from expiry_sidecar import cli as sidecar_cli
from tests.operator import pod_corpus
from tests.operator.injection_checks import check_injected, sidecars
from tests.operator.pod_corpus import DENIED_CASES, INJECTED_CASES, SKIPPED_CASES
from tests.operator.pss_checker import level_of

SETTINGS = SidecarSettings()


def inject(pod: dict[str, Any], native: bool = True, settings: SidecarSettings = SETTINGS) -> dict[str, Any]:
    outcome = admit(pod, settings, native_sidecars_supported=native)
    assert isinstance(outcome, Injected), outcome
    return outcome.pod


@pytest.mark.parametrize("native", [True, False], ids=["native", "regular"])
@pytest.mark.parametrize("name", sorted(INJECTED_CASES))
def test_injected_pod_is_valid_complete_and_keeps_its_pss_level(name: str, native: bool) -> None:
    original = INJECTED_CASES[name]
    before = copy.deepcopy(original)
    result = inject(original, native)
    assert original == before  # the core never mutates its input
    trainers = original["metadata"]["annotations"].get("expiry.io/containers")
    check_injected(original, result, trainers.split(",") if trainers else None)
    assert (sidecars(result)[0][0] == "initContainers") is native


@pytest.mark.parametrize("native", [True, False], ids=["native", "regular"])
@pytest.mark.parametrize("name", sorted(INJECTED_CASES))
def test_injecting_an_injected_pod_changes_nothing(name: str, native: bool) -> None:
    once = inject(INJECTED_CASES[name], native)
    outcome = admit(once, SETTINGS, native_sidecars_supported=native)
    assert isinstance(outcome, Injected) and not outcome.changed
    assert outcome.pod == once


@pytest.mark.parametrize("name", sorted(INJECTED_CASES))
def test_the_record_lists_exactly_what_was_added(name: str) -> None:
    original = INJECTED_CASES[name]
    injected = inject(original)
    stripped = copy.deepcopy(injected)
    record.strip(stripped, record.loads(injected["metadata"]["annotations"][RECORD_ANNOTATION]))
    assert stripped == original


def test_a_restored_pod_whose_injection_was_partly_lost_is_repaired_not_doubled() -> None:
    injected = inject(INJECTED_CASES["jobset"])
    restored = copy.deepcopy(injected)
    del restored["spec"]["volumes"]  # e.g. a backup tool dropped the emptyDir
    restored["spec"]["containers"][0]["env"].append({"name": "EXTRA", "value": "1"})
    result = inject(restored)
    assert len(sidecars(result)) == 1
    assert result["spec"]["volumes"] == injected["spec"]["volumes"]
    assert [e["name"] for e in result["spec"]["containers"][0]["env"]].count(names.TIMER_FILE_ENV) == 1


def test_reordering_by_another_webhook_is_not_a_change() -> None:
    injected = inject(INJECTED_CASES["multi-container"], native=False)
    reordered = copy.deepcopy(injected)
    reordered["spec"]["containers"].reverse()
    outcome = admit(reordered, SETTINGS, native_sidecars_supported=False)
    assert isinstance(outcome, Injected) and not outcome.changed and outcome.pod == reordered


def test_an_upgraded_sidecar_image_replaces_the_recorded_one() -> None:
    old = inject(INJECTED_CASES["jobset"])
    new = inject(old, settings=SidecarSettings(image="ghcr.io/expiry-io/expiry-sidecar:0.2.0"))
    assert [c["image"] for _, c in sidecars(new)] == ["ghcr.io/expiry-io/expiry-sidecar:0.2.0"]


@pytest.mark.parametrize("name", sorted(SKIPPED_CASES))
def test_pods_not_opted_in_are_left_alone(name: str) -> None:
    assert isinstance(admit(SKIPPED_CASES[name], SETTINGS, native_sidecars_supported=True), Skipped)


@pytest.mark.parametrize("name", sorted(DENIED_CASES))
def test_denials_say_what_is_wrong(name: str) -> None:
    pod, words = DENIED_CASES[name]
    outcome = admit(pod, SETTINGS, native_sidecars_supported=True)
    assert isinstance(outcome, Denied), outcome
    assert outcome.code in (400, 403)
    for word in words:
        assert word in outcome.message, (word, outcome.message)


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    return sidecars(pod)[0][1]


def test_trainer_user_and_group_come_from_the_container_over_the_pod() -> None:
    original = copy.deepcopy(INJECTED_CASES["jobset"])  # pod level: runAsUser 1000, runAsGroup 1000
    original["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1001, "runAsGroup": 3000}
    sc = sidecar_of(inject(original))["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (1001, 3000, True)


def test_trainers_that_agree_on_the_uid_but_not_the_group_get_no_group() -> None:
    sc = sidecar_of(inject(INJECTED_CASES["restricted-per-container"]))["securityContext"]
    assert sc["runAsUser"] == 1001
    assert "runAsGroup" not in sc


def test_image_user_trainers_get_a_sidecar_with_only_cap_kill() -> None:
    pod = inject(INJECTED_CASES["image-user"])
    sc = sidecar_of(pod)["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["KILL"]}
    # root: a non-root user loses an added capability at exec (no ambient capabilities in containerd)
    assert (sc["runAsUser"], sc["runAsNonRoot"]) == (0, False)
    assert level_of(pod) == "baseline"


def test_only_listed_containers_are_trainers() -> None:
    pod = inject(INJECTED_CASES["multi-container"])
    shipper = next(c for c in pod["spec"]["containers"] if c["name"] == "fluent-bit")
    assert "env" not in shipper and "volumeMounts" not in shipper
    assert sidecar_of(pod)["securityContext"]["runAsUser"] == 1000  # the trainer's, not the shipper's root


def test_name_and_port_clashes_move_ours_aside() -> None:
    pod = inject(INJECTED_CASES["clashes"])
    sidecar = sidecar_of(pod)
    assert sidecar["volumeMounts"] == [{"name": "expiry-run-1", "mountPath": names.RUN_DIR}]
    assert sidecar["ports"][0]["containerPort"] == names.METRICS_PORT + 1
    assert sidecar["startupProbe"]["httpGet"]["port"] == names.METRICS_PORT + 1
    assert {"name": "expiry-run", "emptyDir": {}} in pod["spec"]["volumes"]  # the user's, kept


def test_a_preset_timer_variable_is_not_duplicated_nor_recorded_as_ours() -> None:
    pod = inject(INJECTED_CASES["env-preset"])
    assert pod["spec"]["containers"][0]["env"] == [
        {"name": names.TIMER_FILE_ENV, "value": names.FIFO_PATH},
        {"name": names.CONTAINER_ENV, "value": "trainer"},
    ]
    recorded = json.loads(pod["metadata"]["annotations"][RECORD_ANNOTATION])["env"]
    assert recorded == {"trainer": [names.CONTAINER_ENV]}


def test_guaranteed_pods_stay_guaranteed() -> None:
    resources = sidecar_of(inject(INJECTED_CASES["gpu-guaranteed"]))["resources"]
    assert resources["requests"] == resources["limits"]
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_options_reach_the_sidecar() -> None:
    sidecar = sidecar_of(inject(INJECTED_CASES["options"]))
    args = sidecar["args"]
    assert args[args.index("--kill-signal") + 1] == "SIGTERM"
    assert args[args.index("--escalate-after") + 1] == "2.5"
    assert args[args.index("--mode") + 1] == "observe"
    assert args[args.index("--deadlines") + 1] == "adaptive"
    assert args[args.index("--adaptive-factor") + 1] == "3"
    assert args[args.index("--adaptive-min-samples") + 1] == "50"
    assert args[args.index("--adaptive-floor") + 1] == "2.5"
    assert sidecar_cli.parser().parse_args(args).deadlines == "adaptive", "the sidecar accepts what it gets"
    assert "--events" not in args
    assert sidecar["resources"]["requests"] == {"cpu": "50m", "memory": "256Mi"}
    assert sidecar["resources"]["limits"]["memory"] == "256Mi"  # raised to the request


def test_default_mode_and_deadlines_pass_no_flag_an_older_sidecar_would_refuse() -> None:
    args = sidecar_of(inject(INJECTED_CASES["gpu-guaranteed"]))["args"]
    assert not {
        "--mode",
        "--deadlines",
        "--adaptive-factor",
        "--adaptive-min-samples",
        "--adaptive-floor",
    } & set(args)
    parsed = sidecar_cli.parser().parse_args(args)
    assert (parsed.mode, parsed.deadlines) == ("enforce", "requested")


def test_the_pod_condition_setting_reaches_every_sidecar() -> None:
    off = sidecar_of(inject(INJECTED_CASES["options"]))["args"]
    on = sidecar_of(inject(INJECTED_CASES["options"], settings=SidecarSettings(pod_condition=True)))["args"]
    assert "--pod-condition" not in off
    assert on.count("--pod-condition") == 1


def test_the_pod_condition_annotation_overrides_the_setting_either_way() -> None:
    pod = INJECTED_CASES["options"]
    with_it = {**pod["metadata"]["annotations"], "expiry.io/pod-condition": "true"}
    without = {**pod["metadata"]["annotations"], "expiry.io/pod-condition": "false"}
    on = inject({**pod, "metadata": {**pod["metadata"], "annotations": with_it}})
    off = inject(
        {**pod, "metadata": {**pod["metadata"], "annotations": without}},
        settings=SidecarSettings(pod_condition=True),
    )
    assert sidecar_of(on)["args"].count("--pod-condition") == 1
    assert "--pod-condition" not in sidecar_of(off)["args"]


def test_stack_dumps_client_gives_trainers_the_dump_dir() -> None:
    pod = inject(INJECTED_CASES["stack-dumps-client"])
    assert {"name": "EXPIRY_DUMP_DIR", "value": names.DUMP_DIR} in pod["spec"]["containers"][0]["env"]
    assert sidecar_of(pod)["args"][-2:] == ["--stack-dumps", names.DUMP_DIR]
    assert "add" not in sidecar_of(pod)["securityContext"]["capabilities"]


def test_stack_dumps_py_spy_adds_sys_ptrace_and_leaves_restricted() -> None:
    original = copy.deepcopy(INJECTED_CASES["restricted"])
    original["metadata"]["annotations"]["expiry.io/stack-dumps"] = "py-spy"
    pod = inject(original)
    context = sidecar_of(pod)["securityContext"]
    # Root keeps the capability across exec; as root it signals the trainer's uid with CAP_KILL.
    assert (context["capabilities"]["add"], context["runAsUser"]) == (["KILL", "SYS_PTRACE"], 0)
    assert context["runAsNonRoot"] is False
    assert (level_of(original), level_of(pod)) == ("restricted", "privileged")


@pytest.mark.parametrize(("annotation", "cluster", "native"), [("true", False, True), ("false", True, False)])
def test_the_native_sidecar_annotation_overrides_the_cluster(
    annotation: str, cluster: bool, native: bool
) -> None:
    original = copy.deepcopy(INJECTED_CASES["jobset"])
    original["metadata"]["annotations"]["expiry.io/native-sidecar"] = annotation
    assert (sidecars(inject(original, cluster))[0][0] == "initContainers") is native


def test_regular_sidecar_exits_when_alone_only_for_pods_that_complete() -> None:
    always = inject(INJECTED_CASES["restricted"], native=False)  # restartPolicy unset = Always
    never = inject(INJECTED_CASES["jobset"], native=False)
    assert "--exit-when-alone" not in sidecar_of(always)["args"]
    assert "--exit-when-alone" in sidecar_of(never)["args"]


@pytest.mark.parametrize("name", sorted(INJECTED_CASES))
def test_a_fresh_pod_is_patched_by_additions_only(name: str) -> None:
    """The webhook's patch adds what expiry injects, and never rewrites the pod's own lists or maps."""
    original = INJECTED_CASES[name]
    outcome = admit(original, SETTINGS, native_sidecars_supported=True)
    assert isinstance(outcome, Injected)
    assert {op["op"] for op in outcome.patch} == {"add"}
    written = [op["path"] for op in outcome.patch if not op["path"].endswith("/-")]
    for path in written:  # a whole field is written only where the pod had none (or an empty one)
        *parent, field = jsonpatch.JsonPointer(path).parts
        owner = jsonpatch.JsonPointer.from_parts(parent).resolve(original)
        assert not owner.get(field) or path == "/spec/shareProcessNamespace", path


def test_null_and_empty_fields_are_filled_in() -> None:
    original = copy.deepcopy(INJECTED_CASES["pytorchjob-worker"])
    original["metadata"]["labels"] = None
    original["spec"]["volumes"] = []
    original["spec"]["containers"][0]["env"] = None
    original["spec"]["containers"][0]["volumeMounts"] = None
    pod = inject(original, native=False)
    trainer = pod["spec"]["containers"][0]
    assert trainer["env"] == [
        {"name": names.TIMER_FILE_ENV, "value": names.FIFO_PATH},
        {"name": names.CONTAINER_ENV, "value": trainer["name"]},
    ]
    assert trainer["volumeMounts"] == [{"name": names.VOLUME_NAME, "mountPath": names.RUN_DIR}]
    assert pod["metadata"]["labels"] == {names.INJECTED_LABEL: "true"}
    assert pod["spec"]["volumes"] == [{"name": names.VOLUME_NAME, "emptyDir": {}}]
    again = admit(pod, SETTINGS, native_sidecars_supported=False)
    assert isinstance(again, Injected) and not again.changed


def test_the_record_text_is_compact_sorted_json_as_earlier_versions_wrote_it() -> None:
    """A pod injected by an older operator must not count as changed just because the text differs."""
    text = inject(INJECTED_CASES["multi-container"])["metadata"]["annotations"][RECORD_ANNOTATION]
    assert text == json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)


SCRAPE = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(names.METRICS_PORT),
    "prometheus.io/path": "/metrics",
}


def test_injected_pods_carry_prometheus_scrape_annotations_for_the_sidecars_port() -> None:
    annotations = inject(INJECTED_CASES["jobset"])["metadata"]["annotations"]
    assert SCRAPE.items() <= annotations.items()
    moved = inject(INJECTED_CASES["clashes"])
    assert moved["metadata"]["annotations"]["prometheus.io/port"] == str(
        sidecar_of(moved)["ports"][0]["containerPort"]
    )
    assert moved["metadata"]["annotations"]["prometheus.io/port"] == str(names.METRICS_PORT + 1)


@pytest.mark.parametrize("key", sorted(SCRAPE))
def test_a_pods_own_prometheus_annotations_are_kept_and_none_are_added(key: str) -> None:
    pod = copy.deepcopy(INJECTED_CASES["jobset"])
    pod["metadata"]["annotations"][key] = "8000" if key.endswith("port") else "own"
    injected = inject(pod)
    ours = {k: v for k, v in injected["metadata"]["annotations"].items() if k.startswith("prometheus.io/")}
    assert ours == {key: pod["metadata"]["annotations"][key]}
    again = admit(injected, SETTINGS, native_sidecars_supported=True)
    assert isinstance(again, Injected) and not again.changed
    stripped = copy.deepcopy(injected)
    record.strip(stripped, record.loads(injected["metadata"]["annotations"][RECORD_ANNOTATION]))
    assert stripped == pod  # the user's annotation survives a strip


def test_a_pod_injected_before_scrape_annotations_existed_is_upgraded_once() -> None:
    old = inject(INJECTED_CASES["jobset"])
    annotations = old["metadata"]["annotations"]
    for key in SCRAPE:
        del annotations[key]
    document = json.loads(annotations[RECORD_ANNOTATION])
    del document["annotations"]  # what an earlier operator wrote
    annotations[RECORD_ANNOTATION] = json.dumps(document, separators=(",", ":"), sort_keys=True)
    upgraded = admit(old, SETTINGS, native_sidecars_supported=True)
    assert isinstance(upgraded, Injected) and upgraded.changed
    assert SCRAPE.items() <= upgraded.pod["metadata"]["annotations"].items()
    again = admit(upgraded.pod, SETTINGS, native_sidecars_supported=True)
    assert isinstance(again, Injected) and not again.changed


# Edges found by mutation testing (docs/testing.md, "Mutation report").


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"containers": [pod_corpus.trainer()], "volumes": {"name": "data"}}, ("spec.volumes",)),
        (
            {"containers": [pod_corpus.trainer()], "initContainers": [{"image": "x"}]},
            ("spec.initContainers",),
        ),
        ({"containers": [{"image": "x"}]}, ("spec.containers",)),
        ({"containers": [pod_corpus.trainer(env={"A": "1"})]}, ("spec.containers[0].env must be a list",)),
        (
            {"containers": [pod_corpus.trainer(volumeMounts="/data")]},
            ("spec.containers[0].volumeMounts must be a list",),
        ),
        ({"containers": [pod_corpus.trainer(ports=9000)]}, ("spec.containers[0].ports must be a list",)),
        (
            {"containers": [pod_corpus.trainer()], "initContainers": [{"name": "setup", "env": "A=1"}]},
            ("spec.initContainers[0].env must be a list",),
        ),
    ],
    ids=["volumes", "init-containers", "containers", "env", "volume-mounts", "ports", "init-env"],
)
def test_what_is_not_a_pod_is_refused_as_a_bad_request(spec: dict[str, Any], words: tuple[str, ...]) -> None:
    outcome = admit(pod_corpus.pod("odd", spec), SETTINGS, native_sidecars_supported=True)
    assert isinstance(outcome, Denied) and outcome.code == 400, outcome
    for word in words:
        assert word in outcome.message, (word, outcome.message)


def _guaranteed_trainer(requests: dict[str, str], limits: dict[str, str]) -> dict[str, Any]:
    pod = copy.deepcopy(INJECTED_CASES["gpu-guaranteed"])
    pod["spec"]["containers"][0]["resources"] = {"requests": requests, "limits": limits}
    return pod


@pytest.mark.parametrize(
    ("requests", "limits"),
    [
        ({"cpu": "8"}, {"cpu": "8"}),  # memory unlimited
        ({"memory": "64Gi"}, {"memory": "64Gi"}),  # cpu unlimited
        ({"cpu": "4", "memory": "64Gi"}, {"cpu": "8", "memory": "64Gi"}),
        ({"cpu": "lots", "memory": "64Gi"}, {"cpu": "8", "memory": "64Gi"}),  # unreadable: not equal
    ],
    ids=["no-memory-limit", "no-cpu-limit", "cpu-below-limit", "unreadable-request"],
)
def test_only_guaranteed_pods_get_a_sidecar_with_requests_equal_to_limits(
    requests: dict[str, str], limits: dict[str, str]
) -> None:
    burstable = sidecar_of(inject(_guaranteed_trainer(requests, limits)))["resources"]
    assert burstable == sidecar_of(inject(INJECTED_CASES["jobset"]))["resources"]  # the configured ones
    assert burstable.get("requests") != burstable.get("limits")
    guaranteed = sidecar_of(inject(_guaranteed_trainer({}, {"cpu": "8", "memory": "64Gi"})))["resources"]
    assert guaranteed["requests"] == guaranteed["limits"]  # requests default to the limits


def test_a_preset_timer_variable_does_not_keep_the_dump_dir_out() -> None:
    pod = copy.deepcopy(INJECTED_CASES["env-preset"])
    pod["metadata"]["annotations"]["expiry.io/stack-dumps"] = "client"
    env = inject(pod)["spec"]["containers"][0]["env"]
    assert env == [
        {"name": names.TIMER_FILE_ENV, "value": names.FIFO_PATH},
        {"name": names.CONTAINER_ENV, "value": "trainer"},
        {"name": names.DUMP_DIR_ENV, "value": names.DUMP_DIR},
        {"name": names.FLIGHT_RECORDER_ENV, "value": str(names.FLIGHT_RECORDER_ENTRIES)},
    ]


def _dumping(
    annotations: dict[str, str] | None = None, env: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    pod = copy.deepcopy(INJECTED_CASES["jobset"])
    pod["metadata"]["annotations"].update({"expiry.io/stack-dumps": "client", **(annotations or {})})
    if env is not None:
        pod["spec"]["containers"][0]["env"] = env
    return pod


def _flight_recorder(pod: dict[str, Any]) -> list[str]:
    return [e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == names.FLIGHT_RECORDER_ENV]


def test_stack_dumps_turn_torch_s_flight_recorder_on_unless_turned_off() -> None:
    assert _flight_recorder(inject(_dumping())) == ["2000"]
    assert _flight_recorder(inject(_dumping({"expiry.io/flight-recorder": "false"}))) == []
    assert (
        _flight_recorder(
            inject(_dumping(), settings=SidecarSettings(stack_dumps="client", flight_recorder=False))
        )
        == []
    )
    on_here = inject(
        _dumping({"expiry.io/flight-recorder": "true"}), settings=SidecarSettings(flight_recorder=False)
    )
    assert _flight_recorder(on_here) == ["2000"]
    assert _flight_recorder(inject(INJECTED_CASES["jobset"])) == [], "no stack dumps: nobody would read it"


@pytest.mark.parametrize("value", ["0", "20000"])
def test_a_trainer_s_own_flight_recorder_size_is_kept_and_not_recorded_as_injected(value: str) -> None:
    pod = inject(_dumping(env=[{"name": names.FLIGHT_RECORDER_ENV, "value": value}]))
    assert _flight_recorder(pod) == [value]
    record = json.loads(pod["metadata"]["annotations"]["expiry.io/injection"])
    assert names.FLIGHT_RECORDER_ENV not in json.dumps(record)


def test_the_injected_flight_recorder_is_stripped_on_readmission_like_the_rest() -> None:
    once = inject(_dumping())
    again = admit(once, SETTINGS, native_sidecars_supported=True)
    assert isinstance(again, Injected) and not again.changed
    assert _flight_recorder(again.pod) == ["2000"]


def test_the_flight_recorder_annotation_refuses_other_values() -> None:
    """The one rule for booleans (the spellings of expiry.io/enabled): anything else is denied by name."""
    denied = admit(_dumping({"expiry.io/flight-recorder": "maybe"}), SETTINGS, native_sidecars_supported=True)
    assert not isinstance(denied, Injected)
    assert "expiry.io/flight-recorder" in str(denied) and "'maybe'" in str(denied)
    allowed = admit(_dumping({"expiry.io/flight-recorder": "yes"}), SETTINGS, native_sidecars_supported=True)
    assert isinstance(allowed, Injected)


def test_stack_dumps_off_in_a_parsed_config_gives_trainers_no_dump_dir() -> None:
    settings = settings_from_dict(json.loads('{"sidecar": {"stackDumps": "off"}}')).sidecar
    pod = inject(INJECTED_CASES["jobset"], settings=settings)
    assert [e["name"] for e in pod["spec"]["containers"][0]["env"]] == [
        names.TIMER_FILE_ENV,
        names.CONTAINER_ENV,
    ]


@pytest.mark.parametrize("field", ["labels", "annotations"])
def test_a_label_named_like_a_pod_list_does_not_upset_readmission(field: str) -> None:
    pod = copy.deepcopy(INJECTED_CASES["jobset"])
    pod["metadata"].setdefault(field, {}).update({"env": "prod", "volumes": "none", "containers": "2"})
    again = admit(inject(pod), SETTINGS, native_sidecars_supported=True)
    assert isinstance(again, Injected) and not again.changed


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (
            {
                "containers": [pod_corpus.trainer()],
                "ephemeralContainers": [{"name": names.SIDECAR_CONTAINER}],
            },
            ("ephemeralContainers", names.SIDECAR_CONTAINER),
        ),
        (
            {
                "containers": [
                    pod_corpus.trainer(volumeMounts=[{"name": "v", "mountPath": names.RUN_DIR + "/"}])
                ]
            },
            ("trainer", names.RUN_DIR),
        ),
        ({"containers": [pod_corpus.trainer()], "os": {"name": "windows"}}, ("Windows",)),
    ],
    ids=["reserved-ephemeral-name", "run-dir-with-slash", "windows"],
)
def test_more_pods_expiry_cannot_protect_are_denied(spec: dict[str, Any], words: tuple[str, ...]) -> None:
    outcome = admit(pod_corpus.pod("odd", spec), SETTINGS, native_sidecars_supported=True)
    assert isinstance(outcome, Denied), outcome
    for word in words:
        assert word in outcome.message, (word, outcome.message)


@pytest.mark.parametrize(
    "env", [{"value": "true"}, {"value": ""}, {"valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]
)
def test_only_a_torch_file_timer_value_of_1_is_denied(env: dict[str, Any]) -> None:
    pod = pod_corpus.pod(
        "ddp", {"containers": [pod_corpus.trainer(env=[{"name": names.TORCH_FILE_TIMER_ENV, **env}])]}
    )
    assert isinstance(admit(pod, SETTINGS, native_sidecars_supported=True), Injected)


def test_a_pods_own_share_process_namespace_survives_a_strip() -> None:
    original = copy.deepcopy(INJECTED_CASES["jobset"])
    original["spec"]["shareProcessNamespace"] = True
    injected = inject(original)
    stripped = copy.deepcopy(injected)
    record.strip(stripped, record.loads(injected["metadata"]["annotations"][RECORD_ANNOTATION]))
    assert stripped == original


def test_a_containers_own_zero_or_false_overrides_the_pods_security_context() -> None:
    as_root = copy.deepcopy(INJECTED_CASES["jobset"])  # pod level: runAsUser 1000
    as_root["spec"]["containers"][0]["securityContext"] = {"runAsUser": 0}
    assert sidecar_of(inject(as_root))["securityContext"]["runAsUser"] == 0
    may_be_root = copy.deepcopy(INJECTED_CASES["image-user"])
    may_be_root["spec"]["securityContext"] = {"runAsNonRoot": True}
    may_be_root["spec"]["containers"][0]["securityContext"] = {"runAsNonRoot": False}
    assert sidecar_of(inject(may_be_root))["securityContext"]["capabilities"]["add"] == ["KILL"]


def test_reordering_inside_a_container_by_another_webhook_is_not_a_change() -> None:
    pod = copy.deepcopy(INJECTED_CASES["clashes"])  # the trainer has its own mount
    pod["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    reordered = inject(pod)
    trainer = reordered["spec"]["containers"][0]
    trainer["env"].reverse()
    trainer["volumeMounts"].reverse()
    outcome = admit(reordered, SETTINGS, native_sidecars_supported=True)
    assert isinstance(outcome, Injected) and not outcome.changed


def test_a_container_listed_twice_is_injected_once() -> None:
    pod = copy.deepcopy(INJECTED_CASES["clashes"])  # the trainer has its own mount
    pod["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    pod["metadata"]["annotations"]["expiry.io/containers"] = "trainer,trainer"
    trainer = inject(pod)["spec"]["containers"][0]
    assert [e["name"] for e in trainer["env"]] == ["A", names.TIMER_FILE_ENV, names.CONTAINER_ENV]
    assert [m["mountPath"] for m in trainer["volumeMounts"]] == ["/x", names.RUN_DIR]


def test_the_sidecar_shares_the_service_account_token_the_api_server_mounted_in_the_trainers() -> None:
    """The ServiceAccount admission plugin runs before the webhook and never after it: without this mount
    the sidecar has no token, and its Events and pod condition are off (seen on a real API server)."""
    pod = copy.deepcopy(INJECTED_CASES["jobset"])
    token = {"name": "kube-api-access-x7k2p", "mountPath": names.SERVICE_ACCOUNT_DIR, "readOnly": True}
    for container in pod["spec"]["containers"]:
        container.setdefault("volumeMounts", []).append(token)
    [(_, sidecar)] = sidecars(inject(pod))
    assert token in sidecar["volumeMounts"]

    without = copy.deepcopy(INJECTED_CASES["jobset"])  # not admitted yet, or automount off: nothing to share
    [(_, sidecar)] = sidecars(inject(without))
    assert all(m["mountPath"] != names.SERVICE_ACCOUNT_DIR for m in sidecar["volumeMounts"])


def test_each_trainer_is_told_its_own_container_name() -> None:
    """The sidecar keeps learned statistics per container: it reads this from each worker's environment."""
    pod = copy.deepcopy(INJECTED_CASES["env-preset"])
    second = copy.deepcopy(pod["spec"]["containers"][0])
    second["name"], second["env"] = "evaluator", []
    pod["spec"]["containers"].append(second)
    injected = inject(pod)
    told = {
        c["name"]: [e["value"] for e in c.get("env") or [] if e["name"] == names.CONTAINER_ENV]
        for c in injected["spec"]["containers"]
    }
    assert told == {"trainer": ["trainer"], "evaluator": ["evaluator"]}
