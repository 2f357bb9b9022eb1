"""Dashboards and alert rules query only metrics the service really exports.

deploy/grafana/*.json and deploy/prometheus/alerts.yml are written against the agreed metric
catalogue (docs/observability.md, "Metrics"). These tests

- check the dashboards are provisionable (schema version, uid, a `datasource` variable, ...);
- extract every metric name from every PromQL expression (panel targets, variable queries, rules)
  and check it against the catalogue, together with the label names the expression uses;
- check every dashboard expression is valid PromQL (with promtool, when it is installed);
- fetch a real /metrics from the app (SQLite and PostgreSQL) and check every metric family the
  dashboards and rules use is exported, with the labels they use.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from favorites.observability import metrics
from tests.helpers import bearer, new_product

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
RULES_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD_FILES = ("overview.json", "database.json", "cache.json", "business.json")

# The agreed catalogue: family -> (type, labels). prometheus_client's process_* metrics are left out
# on purpose: multiprocess mode may not export them, so nothing may depend on them.
CATALOGUE: dict[str, tuple[str, frozenset[str]]] = {
    "http_requests_total": ("counter", frozenset({"method", "path", "status"})),
    "http_request_duration_seconds": ("histogram", frozenset({"method", "path"})),
    "favorites_operations_total": ("counter", frozenset({"operation", "status"})),
    "db_connections_active": ("gauge", frozenset({"pool"})),
    "db_connections_max": ("gauge", frozenset({"pool"})),
    "db_query_duration_seconds": ("histogram", frozenset({"operation"})),
    "cache_hit_ratio": ("gauge", frozenset({"cache_name"})),
    "cache_requests_total": ("counter", frozenset({"cache_name", "result"})),
    "rate_limited_requests_total": ("counter", frozenset({"scope"})),
    "circuit_breaker_state": ("gauge", frozenset({"dependency"})),
    "favorites_active_users": ("gauge", frozenset()),
    "favorites_ready": ("gauge", frozenset()),
}
# Made by Prometheus for every scrape target, not exported by the service.
SCRAPE_GENERATED: dict[str, frozenset[str]] = {"up": frozenset()}
# Exported by exporters beside the service, each scraped by its own job in prometheus.yml:
# kube-state-metrics (FavoritesSyntheticCheckFailing) and redis_exporter (the Cache dashboard).
EXPORTERS: dict[str, frozenset[str]] = {
    "kube_cronjob_status_last_successful_time": frozenset({"namespace", "cronjob"}),
    "redis_memory_used_bytes": frozenset(),
    "redis_memory_max_bytes": frozenset(),
    "redis_evicted_keys_total": frozenset(),
}
NOT_EXPORTED = {**SCRAPE_GENERATED, **EXPORTERS}


def _target_labels() -> frozenset[str]:
    """Attached by Prometheus, not by the service: `job`, `instance` and the labels the example scrape
    configuration (deploy/prometheus/prometheus.yml) sets, so rules and panels can use no other."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "favorites"]
    relabelled = {r["target_label"] for r in job["relabel_configs"] if "target_label" in r}
    return frozenset({"job", "instance"} | relabelled)


TARGET_LABELS = _target_labels()
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


# --------------------------------------------------------------------------------------------------
# PromQL: metric names and label names of an expression (no full parser; see the tests below).

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)')
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE)
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "atan2", "inf", "nan",
})


def metric_names(expr: str) -> set[str]:
    """Every metric name an expression selects (functions, keywords, labels, numbers left out)."""
    names = set()
    for match in _NAME_MATCHER.finditer(expr):
        names.add(match.group(1)[1:-1])
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        following = text[match.end():].lstrip()[:1]
        if following == "(" or word.lower() in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring/group_* clauses."""
    text = _STRING.sub('""', expr)
    labels = set()
    for block in _MATCHERS.findall(text):
        labels |= set(_MATCHER_LABEL.findall(block))
    for match in _GROUPING.finditer(text):
        labels |= {label.strip() for label in match.group(1).split(",") if label.strip()}
    labels.discard("__name__")
    return labels


def family_of(name: str, histograms: set[str]) -> str:
    """x_bucket / x_count / x_sum of a histogram x belong to family x."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


CATALOGUE_HISTOGRAMS = {name for name, (kind, _) in CATALOGUE.items() if kind == "histogram"}


# --------------------------------------------------------------------------------------------------
# Where the expressions are.

@dataclass(frozen=True)
class Query:
    where: str
    expr: str


def load_dashboard(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / name).read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows keep their panels inside


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*$", re.DOTALL)


def variable_query(variable: dict[str, Any]) -> str | None:
    """The PromQL inside a Grafana query variable (label_values(<selector>, label) or query_result)."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    if variable.get("type") != "query" or not isinstance(query, str):
        return None
    if match := _LABEL_VALUES.match(query):
        return match.group(1)
    if match := re.match(r"^\s*query_result\((.*)\)\s*$", query, re.DOTALL):
        return match.group(1)
    return None


def dashboard_queries(name: str) -> list[Query]:
    dashboard = load_dashboard(name)
    queries = []
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                where = f"{name}: panel {panel['title']!r} {target.get('refId')}"
                queries.append(Query(where, target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if expr := variable_query(variable):
            queries.append(Query(f"{name}: variable ${variable['name']}", expr))
    return queries


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES_FILE.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def rule_queries() -> list[Query]:
    return [Query(f"alerts.yml: {rule.get('record') or rule.get('alert')}", str(rule["expr"]))
            for rule in load_rules()]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def every_dashboard_query() -> list[Query]:
    return [query for name in DASHBOARD_FILES for query in dashboard_queries(name)]


# --------------------------------------------------------------------------------------------------
# The PromQL helpers themselves, on hand-written expressions.

@pytest.mark.parametrize(("expr", "expected"), [
    ('sum(rate(http_requests_total{job="favorites", status=~"5.."}[5m]))', {"http_requests_total"}),
    ("histogram_quantile(0.99, sum by (path, le) (rate(http_request_duration_seconds_bucket"
     '{job="$job", path!~"/health/.*|/metrics"}[$__rate_interval])))',
     {"http_request_duration_seconds_bucket"}),
    ("sum without (instance) (rate(a_total[5m] offset 1h)) / on (job) group_left (pool) "
     "max(b) > bool 1e3 and c unless d or Inf", {"a_total", "b", "c", "d"}),
    ('sum(x) by (cache_name) / ignoring(result) group_right y', {"x", "y"}),
    ('label_replace(up{job="a"}, "dst", "$1", "instance", "(by|sum):(.*)")', {"up"}),
    ('{__name__="weird_name", job="x"} + count_values("v", z)', {"weird_name", "z"}),
    ("rate(m:rec:rate5m[1h30m:1m]) - 0x1F * -1.5e-3 + nan", {"m:rec:rate5m"}),
    ('topk(5, sum by(operation)(increase(favorites_operations_total{operation=~"add|remove"}[$__range])))',
     {"favorites_operations_total"}),
    ('max_over_time(up{job="favorites"}[45s]) == 0 or absent_over_time(up{job="favorites"}[45s])', {"up"}),
    ("vector(1) + time() - scalar(foo @ start())", {"foo"}),
    ('sum BY (le) (rate(h_bucket{a="}{"}[5m])) AND ON() vector(0)', {"h_bucket"}),
])
def test_metric_names_are_extracted(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_label_names_are_extracted() -> None:
    expr = ('sum by (path, le) (rate(h_bucket{job="$job", le=~"1|1.0", path!~"/health/.*"}[5m]))'
            ' / on (instance) group_left(pool) g{__name__="x", pool="primary"}')
    assert label_names(expr) == {"path", "le", "job", "instance", "pool"}


def test_histogram_series_map_to_their_family() -> None:
    histograms = {"http_request_duration_seconds"}
    assert family_of("http_request_duration_seconds_bucket", histograms) == "http_request_duration_seconds"
    assert family_of("http_request_duration_seconds_count", histograms) == "http_request_duration_seconds"
    assert family_of("cache_requests_total", histograms) == "cache_requests_total"
    assert family_of("unknown_bucket", histograms) == "unknown_bucket"


def test_variable_queries_are_unwrapped() -> None:
    variable = {"type": "query", "query": 'label_values(up{job="$job"}, color)'}
    assert variable_query(variable) == 'up{job="$job"}'
    assert variable_query({"type": "query", "query": {"query": "label_values(up, job)"}}) == "up"
    assert variable_query({"type": "datasource", "query": "prometheus"}) is None


# --------------------------------------------------------------------------------------------------
# The exposition format of a live /metrics.

@dataclass
class Exposition:
    families: dict[str, str] = field(default_factory=dict)            # family -> type
    labels: dict[str, set[str]] = field(default_factory=dict)         # family -> labels on samples

    def family_of(self, name: str) -> str:
        return family_of(name, {f for f, kind in self.families.items() if kind in ("histogram", "summary")})


_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(\{(.*)\})?\s")
_SAMPLE_LABEL = re.compile(r'([A-Za-z_]\w*)="(?:[^"\\]|\\.)*"')


def parse_exposition(text: str) -> Exposition:
    """Families (from # TYPE) and the label names seen on their samples."""
    exposition = Exposition()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            exposition.families[name] = kind.strip()
            if kind.strip() == "counter" and not name.endswith("_total"):  # OpenMetrics style
                exposition.families[name + "_total"] = "counter"
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name = match.group(1)
        family = exposition.family_of(name)
        if family not in exposition.families:
            for suffix in ("_total", "_created", "_gsum", "_gcount"):
                if name.endswith(suffix) and name[: -len(suffix)] in exposition.families:
                    family = name[: -len(suffix)]
        exposition.labels.setdefault(family, set()).update(_SAMPLE_LABEL.findall(match.group(3) or ""))
    return exposition


SAMPLE_EXPOSITION = """\
# HELP http_requests_total HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="GET",path="/health/live",status="200"} 3.0
# HELP http_requests_created HTTP requests.
# TYPE http_requests_created gauge
http_requests_created{method="GET",path="/health/live",status="200"} 1.7e+09
# HELP http_request_duration_seconds Latency.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.001",method="GET",path="/health/live"} 1.0
http_request_duration_seconds_bucket{le="+Inf",method="GET",path="/health/live"} 3.0
http_request_duration_seconds_count{method="GET",path="/health/live"} 3.0
http_request_duration_seconds_sum{method="GET",path="/health/live"} 0.002
# HELP cache_requests Cache lookups (OpenMetrics naming).
# TYPE cache_requests counter
cache_requests_total{cache_name="favorites_page",result="miss"} 1.0
# HELP favorites_active_users Users seen in the last 5 minutes.
# TYPE favorites_active_users gauge
favorites_active_users 1.0
# HELP rate_limited_requests_total Requests refused with 429.
# TYPE rate_limited_requests_total counter
"""


def test_exposition_parser_on_a_sample() -> None:
    exposition = parse_exposition(SAMPLE_EXPOSITION)
    assert exposition.families["http_requests_total"] == "counter"
    assert exposition.families["http_request_duration_seconds"] == "histogram"
    assert exposition.families["cache_requests_total"] == "counter"
    assert exposition.families["rate_limited_requests_total"] == "counter"  # no sample yet: still a family
    assert exposition.labels["http_requests_total"] == {"method", "path", "status"}
    assert exposition.labels["http_request_duration_seconds"] == {"le", "method", "path"}
    assert exposition.labels["cache_requests_total"] == {"cache_name", "result"}
    assert exposition.labels["favorites_active_users"] == set()
    assert "rate_limited_requests_total" not in exposition.labels
    used = {exposition.family_of(n) for n in metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))")}
    assert used == {"http_request_duration_seconds"}


# --------------------------------------------------------------------------------------------------
# Static checks against the catalogue (no service needed).

def test_the_four_dashboards_exist() -> None:
    assert sorted(p.name for p in GRAFANA.glob("*.json")) == sorted(DASHBOARD_FILES)
    assert (GRAFANA / "provisioning" / "dashboards.yml").is_file()
    assert (GRAFANA / "provisioning" / "datasources.yml").is_file()
    for name in ("dashboards.yml", "datasources.yml"):
        document = yaml.safe_load((GRAFANA / "provisioning" / name).read_text())
        assert document["apiVersion"] == 1


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_is_provisionable(name: str) -> None:
    dashboard = load_dashboard(name)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "favorites-" + name.removesuffix(".json")
    assert dashboard["title"]
    assert dashboard.get("id") is None  # provisioning assigns ids
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    queried = 0
    for panel in all_panels(dashboard["panels"]):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] in ("row", "text"):
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
            queried += 1
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    assert queried >= 5


def test_dashboard_uids_are_unique() -> None:
    uids = [load_dashboard(name)["uid"] for name in DASHBOARD_FILES]
    assert len(uids) == len(set(uids))


def _catalogue_problems(queries: list[Query], extra_metrics: dict[str, frozenset[str]]) -> list[str]:
    known = {**{name: labels for name, (_, labels) in CATALOGUE.items()}, **NOT_EXPORTED, **extra_metrics}
    problems = []
    for query in queries:
        families = {family_of(name, CATALOGUE_HISTOGRAMS) for name in metric_names(query.expr)}
        if not families:
            problems.append(f"{query.where}: no metric found in {query.expr!r}")
        unknown = families - set(known)
        if unknown:
            problems.append(f"{query.where}: not in the catalogue: {sorted(unknown)}")
            continue
        allowed = set(TARGET_LABELS)
        for family in families:
            allowed |= known[family]
            if family in CATALOGUE_HISTOGRAMS:
                allowed.add("le")
        if stray := label_names(query.expr) - allowed:
            problems.append(f"{query.where}: labels {sorted(stray)} not on {sorted(families)}")
    return problems


def test_dashboards_use_only_catalogue_metrics_and_labels() -> None:
    problems = _catalogue_problems(every_dashboard_query(), {})
    assert not problems, "\n".join(problems)


def test_rules_use_only_catalogue_metrics_and_labels() -> None:
    # A rule may use what a recording rule of the file records (promtool tests check its labels).
    recorded = {name: frozenset() for name in recorded_names()}
    problems = _catalogue_problems(rule_queries(), recorded)
    assert not problems, "\n".join(problems)


def test_every_catalogue_metric_has_a_panel() -> None:
    used = {family_of(name, CATALOGUE_HISTOGRAMS)
            for query in every_dashboard_query() for name in metric_names(query.expr)}
    assert set(CATALOGUE) - used == set()


def test_every_alert_has_severity_summary_and_runbook() -> None:
    docs = (ROOT / "docs" / "observability.md").read_text()
    anchors = {_anchor(line.lstrip("#").strip()) for line in docs.splitlines() if line.startswith("#")}
    alerts = [rule for rule in load_rules() if "alert" in rule]
    assert alerts
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/observability.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor}"


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).is_file():
        pytest.skip("promtool not installed (scripts/check-rules.sh installs it)")

    def concrete(expr: str) -> str:  # Grafana variables -> values promtool can parse
        def value(match: re.Match[str]) -> str:
            name = match.group().strip("${}")
            return "5m" if name.startswith("__") else "x"
        return _GRAFANA_VARIABLE.sub(value, expr)

    queries = every_dashboard_query()
    rules = [{"record": f"dashboard:check_{i}:expr", "expr": concrete(q.expr)} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# Against the live service (needs the /metrics endpoint).

async def _live_exposition(client: httpx.AsyncClient) -> Exposition:
    """Exercise the app a little so labelled families have samples, then read /metrics."""
    user = uuid.uuid4()
    auth = bearer(user)
    assert (await client.get("/health/live")).status_code == 200
    metrics.favorites_ready.set(0)
    assert (await client.get("/health/ready")).status_code == 200
    assert REGISTRY.get_sample_value("favorites_ready") == 1
    product = await new_product(client)
    added = await client.put(f"/v1/users/{user}/favorites/{product}", headers=auth)
    assert added.status_code == 201, added.text
    listed = await client.get(f"/v1/users/{user}/favorites", headers=auth)
    assert listed.status_code == 200, listed.text
    assert (await client.get(f"/v1/users/{user}/favorites", headers=auth)).status_code == 200
    assert (await client.get(f"/v1/users/{user}/favorites/count", headers=auth)).status_code == 200
    assert (await client.get("/no/such/path")).status_code == 404
    response = await client.get("/metrics")
    assert response.status_code == 200, f"GET /metrics: {response.status_code} {response.text[:200]}"
    assert response.headers["content-type"].startswith("text/plain"), response.headers["content-type"]
    return parse_exposition(response.text)


def _live_problems(queries: list[Query], exposition: Exposition, recorded: set[str]) -> list[str]:
    problems = []
    for query in queries:
        # x_bucket -> x for the live histograms and, so a missing one is named by family, the agreed.
        families = {exposition.family_of(family_of(name, CATALOGUE_HISTOGRAMS))
                    for name in metric_names(query.expr)} - recorded
        families -= set(NOT_EXPORTED)
        if missing := families - set(exposition.families):
            problems.append(f"{query.where}: not exported by /metrics: {sorted(missing)}")
            continue
        if recorded & metric_names(query.expr):
            continue  # labels of recorded series are the business of the promtool tests
        if not families or not all(family in exposition.labels for family in families):
            continue  # some family has no samples yet: its labels cannot be checked
        allowed = set(TARGET_LABELS).union(*(exposition.labels[family] for family in families))
        if stray := label_names(query.expr) - allowed:
            problems.append(f"{query.where}: labels {sorted(stray)} not on exported {sorted(families)}")
    return problems


async def test_dashboard_metrics_are_exported(client: httpx.AsyncClient) -> None:
    exposition = await _live_exposition(client)
    problems = _live_problems(every_dashboard_query(), exposition, set())
    assert not problems, "\n".join(problems)


async def test_rule_metrics_are_exported(client: httpx.AsyncClient) -> None:
    exposition = await _live_exposition(client)
    problems = _live_problems(rule_queries(), exposition, recorded_names())
    assert not problems, "\n".join(problems)


async def test_catalogue_is_exported_with_its_labels(client: httpx.AsyncClient) -> None:
    exposition = await _live_exposition(client)
    missing = sorted(set(CATALOGUE) - set(exposition.families))
    assert not missing, f"catalogue metrics not exported: {missing}"
    for name, (kind, labels) in CATALOGUE.items():
        assert exposition.families[name] == kind, name
        if name in exposition.labels:  # has samples
            seen = exposition.labels[name] - {"le", "pid"}
            assert seen == labels, f"{name}: labels {sorted(seen)}, agreed {sorted(labels)}"


def test_every_exporter_metric_is_scraped_by_a_job_of_its_own() -> None:
    """Metrics the service does not export come from exporters that prometheus.yml scrapes:
    a panel or rule on them would otherwise show nothing without saying why."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"redis", "kube-state-metrics"} <= jobs
    queries = [*every_dashboard_query(), *rule_queries()]
    used = {name for query in queries for name in metric_names(query.expr)} & set(EXPORTERS)
    assert used == set(EXPORTERS)
    for query in queries:
        if any(name.startswith("redis_") for name in metric_names(query.expr)):
            assert 'job="redis"' in query.expr, query.where
