"""The Grafana dashboards: well-formed for Grafana, and fed by metrics that really exist.

The structural checks read the JSON. The feed checks run a real ``expiry-sidecar serve`` in a real
PID namespace (the ``pod``/``sidecar`` fixtures of tests/conftest.py) and let it kill a real hanging
worker, and run the real ``expiry-operator`` against kmock (tests/operator/operator_harness.py) and
let it inject a pod and find an unprotected one; they scrape both over HTTP and require every metric
a dashboard query or an alert rule names to be in those scrapes, with every label the query filters
or groups by.

Queries are read by promql-parser, a real PromQL parser: Grafana's duration variables are replaced
by durations first (``$namespace`` inside a label matcher's string is valid PromQL as it is).
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from expiry.names import DUMP_DIR_ENV, ENABLED_ANNOTATION, POD_NAME_ENV, POD_NAMESPACE_ENV
from tests.operator.operator_harness import KubeApi, OperatorProcess, kill, make_tls
from tests.support.pod import Pod
from tests.support.sidecar import Metrics, Sidecar, Worker, wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "charts/expiry/dashboards").glob("*.json"))
RULES = ROOT / "charts/expiry/rules/expiry-alerts.yaml"
DATASOURCE_UID = "${datasource}"

TARGET_LABELS = frozenset({"namespace", "pod", "container", "job", "instance", "endpoint", "service"})
"""Labels Prometheus adds to every series from a PodMonitor/ServiceMonitor target."""
PROMETHEUS_SERIES: dict[str, frozenset[str]] = {"up": frozenset()}
"""Series Prometheus makes itself for each target."""
OPERATOR_METRICS = (
    "expiry_admissions",
    "expiry_admission_duration_seconds",
    "expiry_unprotected_pods",
    "expiry_hang_incidents",
    "expiry_webhook_certificate",
)
"""Prefixes of the operator's series: its panels do not follow $namespace/$pod (the pods' namespace is
``pod_namespace`` there, and the operator has no pod of the selection)."""
GRAFANA_DURATIONS = {"__rate_interval": "2m", "__interval": "30s", "__range": "6h"}
SIDECAR_VARIABLES = ("namespace", "pod")


# -- reading queries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    where: str
    """Dashboard, panel and target, for messages."""
    promql: str
    label: str | None = None
    """For a ``label_values(selector, label)`` variable query: the label it lists."""

    def parse(self) -> promql_parser.Expr:
        text = re.sub(r"\$\{?(__\w+)\}?", lambda m: GRAFANA_DURATIONS.get(m[1], m[0]), self.promql)
        try:
            return promql_parser.parse(text)
        except Exception as exc:
            raise AssertionError(f"{self.where}: not valid PromQL: {self.promql!r}: {exc}") from exc


def load_dashboard(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, also those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(path: Path) -> Iterator[Query]:
    dashboard = load_dashboard(path)
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Query(f"{path.name}: panel {panel['title']!r} {target['refId']}", target["expr"])
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            yield Query(f"{path.name}: annotation {annotation['name']!r}", annotation["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            text = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            found = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", text)
            assert found, f"{path.name}: variable {variable['name']}: expected label_values(selector, label)"
            yield Query(f"{path.name}: variable {variable['name']!r}", found[1], label=found[2])


def rule_queries() -> Iterator[Query]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield Query(f"{RULES.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])


def every_dashboard_query() -> list[Query]:
    return [query for path in DASHBOARDS for query in dashboard_queries(path)]


def all_queries() -> list[Query]:
    return every_dashboard_query() + list(rule_queries())


@dataclass
class Uses:
    """What one query asks of the metrics: names, and labels per name or per group of names."""

    matchers: dict[str, set[str]] = field(default_factory=dict)
    """metric name -> the label names its selectors match on."""
    groupings: list[tuple[set[str], set[str]]] = field(default_factory=list)
    """(labels an aggregation keeps, a binary operation matches on or label_replace reads, the metrics
    under it)."""
    made: set[str] = field(default_factory=set)
    """Labels the query makes itself with label_replace/label_join."""


def selector_names(expr: promql_parser.Expr) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.MatrixSelector):
            node = node.vector_selector
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers}
            name = node.name or next(
                (
                    m.value
                    for m in node.matchers.matchers
                    if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal
                ),
                None,
            )
            assert name, f"name the metric, so it can be checked: {node}"
            found.setdefault(name, set()).update(labels - {"__name__"})

    promql_parser.walk(expr, visit)
    return found


def uses(query: Query) -> Uses:
    expr = query.parse()
    result = Uses(matchers=selector_names(expr))
    if query.label is not None:
        result.groupings.append(({query.label}, set(result.matchers)))

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            result.groupings.append((set(node.modifier.labels), set(selector_names(node.expr))))
        if isinstance(node, promql_parser.BinaryExpr) and node.modifier and node.modifier.matching:
            under = set(selector_names(node.lhs)) | set(selector_names(node.rhs))
            result.groupings.append((set(node.modifier.matching.labels), under))
        if isinstance(node, promql_parser.Call) and node.func.name in ("label_replace", "label_join"):
            # label_replace(v, destination, replacement, source, regex)
            # label_join(v, destination, separator, source, ...)
            vector, destination, _, *rest = node.args
            sources = rest if node.func.name == "label_join" else rest[:1]
            result.made.add(destination.val)
            result.groupings.append(({arg.val for arg in sources}, set(selector_names(vector))))

    promql_parser.walk(expr, visit)
    return result


def test_reading_a_query_sees_through_functions_aggregations_and_matching() -> None:
    query = Query(
        "example",
        'histogram_quantile(0.9, sum by (le, pod) (rate(a_bucket{reason!~"x|y"}[$__rate_interval])))'
        ' / on (pod) group_left () max_over_time(b[1h]) or vector(0) > bool {__name__="c"}'
        ' or max by (n) (label_replace(d, "n", "$1", "src", "(.*)"))'
        ' or label_join(e, "j", ",", "s1", "s2")',
    )
    seen = uses(query)
    assert seen.matchers == {"a_bucket": {"reason"}, "b": set(), "c": set(), "d": set(), "e": set()}
    assert ({"le", "pod"}, {"a_bucket"}) in seen.groupings
    assert ({"pod"}, {"a_bucket", "b"}) in seen.groupings
    assert ({"src"}, {"d"}) in seen.groupings
    assert ({"s1", "s2"}, {"e"}) in seen.groupings
    assert seen.made == {"n", "j"}


# -- structure ------------------------------------------------------------------------------------


@pytest.fixture(params=DASHBOARDS, ids=[path.name for path in DASHBOARDS])
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    path: Path = request.param
    return load_dashboard(path)


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS, "no dashboards in charts/expiry/dashboards"


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert dashboard.get("uid"), "a fixed uid keeps links to the dashboard stable across installs"


def test_the_datasource_namespace_and_pod_variables_exist(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in SIDECAR_VARIABLES:
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == DATASOURCE_UID
        assert variable["multi"] and variable["includeAll"], f"${name} should allow several and all"
    pod_query = variables["pod"]["query"]["query"]
    assert '"$namespace"' in pod_query, "the pod list should follow the namespace selection"


def test_every_panel_queries_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_UID, f"panel {panel['title']!r}"
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, (
                f"panel {panel['title']!r} {target['refId']}"
            )


@pytest.mark.parametrize("query", all_queries(), ids=lambda query: query.where)
def test_every_query_is_valid_promql(query: Query) -> None:
    uses(query)


def test_every_sidecar_panel_follows_the_namespace_and_pod_variables() -> None:
    for query in every_dashboard_query():
        for name, labels in uses(query).matchers.items():
            if name.startswith(OPERATOR_METRICS) or query.label is not None:
                continue
            assert set(SIDECAR_VARIABLES) <= labels, f"{query.where}: {name} ignores $namespace/$pod"
            for variable in SIDECAR_VARIABLES:
                assert f'{variable}=~"${variable}"' in query.promql, f"{query.where}: use {variable}=~"


def panels_querying(dashboard: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    return [
        panel
        for panel in panels(dashboard)
        if any(
            metric in uses(Query(panel["title"], target["expr"])).matchers
            for target in panel.get("targets", [])
        )
    ]


def test_would_have_killed_is_shown_beside_killed() -> None:
    """Observe mode's "would have killed" sits next to the kills: in the overview and in one graph."""
    dashboard = load_dashboard(ROOT / "charts/expiry/dashboards/expiry.json")
    stats = [panel for panel in panels(dashboard) if panel["type"] == "stat"]
    titles = [panel["title"] for panel in sorted(stats, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))]
    assert titles.index("Would have killed in range") == titles.index("Kills in range") + 1
    both = set(map(id, panels_querying(dashboard, "expiry_kills_total"))) & set(
        map(id, panels_querying(dashboard, "expiry_observed_expirations_total"))
    )
    assert both, "no panel graphs kills and would-have-killed together"


def test_a_hang_incidents_row_holds_this_rounds_metrics() -> None:
    dashboard = load_dashboard(ROOT / "charts/expiry/dashboards/expiry.json")
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    row = next(panel for panel in rows if panel["title"] == "Hang incidents")
    below = [r["gridPos"]["y"] for r in rows if r["gridPos"]["y"] > row["gridPos"]["y"]]
    end = min(below, default=10**6)
    inside = {
        metric
        for panel in dashboard["panels"]
        if row["gridPos"]["y"] < panel["gridPos"]["y"] < end
        for target in panel.get("targets", [])
        for metric in uses(Query(panel["title"], target["expr"])).matchers
    }
    assert {
        "expiry_hang_incidents_total",
        "expiry_observed_expirations_total",
        "expiry_fifo_competing_readers",
        "expiry_pod_conditions_total",
        "expiry_blocks_over_adaptive_deadline_total",
        "expiry_block_duration_seconds_bucket",
    } <= inside


# -- the real feed --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrapes:
    """Two scrapes of one real process: before and after it did what the panels show."""

    before: Metrics
    after: Metrics

    def series(self) -> dict[str, frozenset[str]]:
        """Series name -> its label names, as Prometheus stores them (before adding target labels)."""
        labels: dict[str, set[str]] = {}
        for name, pairs in self.after.samples:
            labels.setdefault(name, set()).update(label for label, _ in pairs)
        return {name: frozenset(names) for name, names in labels.items()}

    def appeared(self) -> set[tuple[str, frozenset[tuple[str, str]]]]:
        """Series in the second scrape that were not in the first."""
        return self.after.samples.keys() - self.before.samples.keys()


@pytest.fixture
def sidecar_scrapes(
    sidecar: Callable[..., Sidecar], pod: Pod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Scrapes:
    """A real sidecar with every option the operator can turn on (Events go to kmock), while a worker
    holds a timer, and again after it dumped the stack of another, stuck, worker and killed it."""
    with KubeApi() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.setenv(POD_NAME_ENV, "train-0")
        monkeypatch.setenv(POD_NAMESPACE_ENV, "team-a")
        dumps = tmp_path / "dumps"
        monkeypatch.setenv(DUMP_DIR_ENV, str(dumps))  # the trainers' side of stack dumps
        state = tmp_path / "state.json"
        server = sidecar(
            "--events", "--pod-condition", "--stack-dumps", str(dumps), "--state-file", str(state)
        )
        holder = Worker(pod, server.fifo, "hang", "--after", "3600")
        holder.expect("armed")
        before = server.wait_metric("expiry_timers_active", 1)
        stuck = Worker(pod, server.fifo, "hang", "--after", "0.2")
        stuck.expect("armed")
        assert stuck.wait() == -signal.SIGKILL
        after = server.wait_metric("expiry_events_total", 1, result="recorded")
    assert after("expiry_kills_total", signal="SIGKILL") == 1
    assert after("expiry_stack_dumps_total", result="ok") == 1
    assert holder.alive()
    return Scrapes(before, after)


def annotated_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a", "annotations": {ENABLED_ANNOTATION: "true"}},
        "spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]},
    }


@pytest.fixture
def operator_scrapes(tmp_path: Path) -> Scrapes:
    """The real operator (against kmock) at start, and after it injected a pod, found one unprotected
    and reported a hang from a sidecar's kill Event."""
    hangs = {"hangReports": {"window": 0.5, "maxSpan": 5}}
    with (
        KubeApi() as api,
        OperatorProcess(api, make_tls(tmp_path / "tls"), tmp_path / "operator", config=hangs) as operator,
    ):
        before = Metrics(operator.metrics())
        assert operator.admit(annotated_pod("injected"))["response"]["allowed"]
        api.create_pod(annotated_pod("created-while-the-webhook-was-down"))
        wait_for(
            lambda: Metrics(operator.metrics())("expiry_unprotected_pods", pod_namespace="team-a") == 1,
            what="the operator to count the unprotected pod",
        )
        api.post_kill_event(annotated_pod("created-while-the-webhook-was-down"), [kill(0, "train.py:88", [])])
        wait_for(
            lambda: (
                Metrics(operator.metrics())("expiry_hang_incidents_total", pod_namespace="team-a", kind="Pod")
                == 1
            ),
            what="the operator to report the hang",
        )
        after = Metrics(operator.metrics())
    assert after("expiry_admissions_total", result="injected") == 1
    return Scrapes(before, after)


@pytest.fixture
def exported(sidecar_scrapes: Scrapes, operator_scrapes: Scrapes) -> dict[str, frozenset[str]]:
    return {**sidecar_scrapes.series(), **operator_scrapes.series(), **PROMETHEUS_SERIES}


def missing(queries: list[Query], known: dict[str, frozenset[str]]) -> list[str]:
    """What each query asks for that no series has: unknown names, unknown labels."""
    added = TARGET_LABELS
    problems = []
    for query in queries:
        seen = uses(query)
        for name, labels in seen.matchers.items():
            if name not in known:
                problems.append(f"{query.where}: no series {name}")
            elif labels - known[name] - added:
                problems.append(f"{query.where}: {name} has no label {sorted(labels - known[name] - added)}")
        for labels, under in seen.groupings:
            if not under <= known.keys():
                continue  # reported above
            have = added.union(seen.made, *(known[name] for name in under))
            if labels - have:
                problems.append(f"{query.where}: no label {sorted(labels - have)} on {sorted(under)}")
    return problems


def test_real_processes_feed_every_dashboard_query(exported: dict[str, frozenset[str]]) -> None:
    problems = missing(every_dashboard_query(), exported)
    assert not problems, "\n".join([*problems, f"exported: {sorted(exported)}"])


def test_real_processes_feed_every_alert_rule(exported: dict[str, frozenset[str]]) -> None:
    problems = missing(list(rule_queries()), exported)
    assert not problems, "\n".join([*problems, f"exported: {sorted(exported)}"])


def test_the_check_notices_a_metric_that_is_not_exported(exported: dict[str, frozenset[str]]) -> None:
    wrong = [
        Query("misspelt", 'sum(rate(expiry_kill_total{namespace=~"$namespace"}[5m]))'),
        Query("wrong label", "sum by (sig) (expiry_kills_total)"),
    ]
    assert missing(wrong, exported) == [
        "misspelt: no series expiry_kill_total",
        "wrong label: no label ['sig'] on ['expiry_kills_total']",
    ]


def rated(query: Query) -> set[str]:
    """Names the query takes rate() or increase() of."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.Call) and node.func.name in ("rate", "irate", "increase"):
            names.update(selector_names(node))

    promql_parser.walk(query.parse(), visit)
    return names


def test_every_series_a_query_rates_exists_before_its_first_increment(
    sidecar_scrapes: Scrapes, operator_scrapes: Scrapes
) -> None:
    """rate() and increase() cannot see a series' first sample as an increase: a counter that appears
    with its first event (a label value first set then) hides that event from panels and alerts."""
    names = set().union(*map(rated, [*every_dashboard_query(), *rule_queries()]))
    appeared = sidecar_scrapes.appeared() | operator_scrapes.appeared()
    late = sorted(f"{name}{dict(labels)}" for name, labels in appeared if name in names)
    assert not late, f"series that appeared with their first event instead of starting at 0: {late}"


def test_every_panel_is_described_in_the_docs(dashboard: dict[str, Any]) -> None:
    headings = set(
        re.findall(r"^### (.+?)\s*$", (ROOT / "docs/dashboards.md").read_text(), flags=re.MULTILINE)
    )
    titles = {panel["title"] for panel in panels(dashboard) if panel["type"] != "row"}
    assert titles <= headings, f"docs/dashboards.md has no section for {sorted(titles - headings)}"
