"""The deployment artifacts say what the seed designs, name only settings that exist, and agree
with each other and with the code: the labels and port names the Kubernetes manifests give the
pods are the ones Prometheus keeps, the labels the rules and dashboards use reach the series, the
rollout's analysis measures the new revision against the seed's thresholds, and the runbooks'
commands name resources that are shipped."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from favorites import bootstrap
from favorites.adapters.flags import OpenFeatureFlags
from favorites.config import ENV_PREFIX, SECRET_FIELDS, Settings
from favorites.domain.flags import ENABLE_FAVORITES_V2
from favorites.entrypoints import cli, smoke
from favorites.entrypoints.http import health
from favorites.observability import exposition, metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DOCS = ROOT / "docs"

# The seed's rollback triggers (design-operations.md, Step 9, "Rollback Plan").
SEED_ERROR_RATE = 0.05          # error rate > 5 % ...
SEED_P99_SECONDS = 2            # p99 latency > 2 s ...
SEED_FOR = "5m"                 # ... for 5 minutes
SEED_HEALTH_FAILURES = 3        # health check failures > 3 consecutive

# Argo Rollouts labels every pod of a Rollout with the hash of its ReplicaSet's template.
ARGO_HASH_LABEL = "rollouts-pod-template-hash"
TRIGGER_ALERT = "FavoritesRollbackTrigger"


def _docs(name: str, directory: Path = K8S) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((directory / name).read_text()) if d]


def _all_resources() -> list[dict[str, Any]]:
    return [d for path in sorted(K8S.glob("*.yaml")) for d in _docs(path.name)]


def _names(kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in _all_resources() if d["kind"] == kind}


def _rollout() -> dict[str, Any]:
    [rollout] = _docs("rollout.yaml")
    return rollout


def _container() -> dict[str, Any]:
    [container] = _rollout()["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _pod_labels() -> dict[str, str]:
    return dict(_rollout()["spec"]["template"]["metadata"]["labels"])


def _templates() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _docs("analysis.yaml") if d["kind"] == "AnalysisTemplate"}


def _configmap() -> dict[str, str]:
    configmaps = {d["metadata"]["name"]: d for d in _docs("configmap.yaml")}
    return dict(configmaps["favorites-config"]["data"])


def _seconds(duration: str | int) -> int:
    if isinstance(duration, int):
        return duration
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _recording_rules() -> dict[str, str]:
    return {rule["record"]: str(rule["expr"]) for rule in _rules() if "record" in rule}


def _trigger_alerts() -> dict[str, dict[str, Any]]:
    return {rule["labels"]["trigger"]: rule for rule in _rules() if rule.get("alert") == TRIGGER_ALERT}


def _scrape_job() -> dict[str, Any]:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "favorites"]
    return dict(job)


def _scrape_interval() -> int:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return _seconds(_scrape_job().get("scrape_interval", config["global"]["scrape_interval"]))


# --------------------------------------------------------------------------------------------------
# Prometheus relabelling, simulated on the pods the manifests make (the subset of Prometheus'
# semantics the example configuration uses: keep, drop, replace; anchored regexes).

def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _pod_target(labels: dict[str, str], port_name: str, *, phase: str = "Running",
                namespace: str = "shop", pod: str = "favorites-5f7d8c9b6d-x2x7q") -> dict[str, str]:
    """The meta labels of a kubernetes_sd `pod` target: one per container port."""
    meta = {f"__meta_kubernetes_pod_label_{_sanitize(k)}": v for k, v in labels.items()}
    meta |= {f"__meta_kubernetes_pod_labelpresent_{_sanitize(k)}": "true" for k in labels}
    meta |= {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__address__": "10.0.0.7:9100",
    }
    return meta


def _relabel(target: dict[str, str], rules: list[dict[str, Any]], *, filters: bool = True
             ) -> dict[str, str] | None:
    """The target's labels after relabelling (None: dropped), without the `__` ones. With
    `filters=False` keep and drop are ignored: the labels a kept target would get."""
    labels = dict(target)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(n, "") for n in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if filters and action == "keep" and not match:
            return None
        if filters and action == "drop" and match:
            return None
        if action == "replace" and match:
            replacement = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", str(rule.get("replacement", "$1")))
            result = match.expand(replacement)
            if result:
                labels[rule["target_label"]] = result
            else:
                labels.pop(rule["target_label"], None)
        assert action in ("keep", "drop", "replace"), f"relabel action {action} is not simulated"
    return {k: v for k, v in labels.items() if not k.startswith("__") and v}


def _scraped_labels(labels: dict[str, str], port_name: str, **kw: str) -> dict[str, str] | None:
    return _relabel(_pod_target(labels, port_name, **kw), _scrape_job()["relabel_configs"])


def _rollout_pod_labels(pod_hash: str = "5f7d8c9b6d") -> dict[str, str]:
    """What a running pod of the Rollout carries: its template's labels plus Argo's hash."""
    return _pod_labels() | {ARGO_HASH_LABEL: pod_hash}


def _metrics_port() -> dict[str, Any]:
    number = int(_configmap()["FAVORITES_METRICS_PORT"])
    [port] = [p for p in _container()["ports"] if p["containerPort"] == number]
    return dict(port)


# --------------------------------------------------------------------------------------------------
# Scaling, probes, settings, flags

def test_hpa_scales_2_to_10_at_70_percent_cpu() -> None:
    [hpa] = _docs("hpa.yaml")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"]["kind"] == "Rollout"
    assert spec["scaleTargetRef"]["name"] == _rollout()["metadata"]["name"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    [metric] = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == 70


def test_probes_match_the_health_endpoints_and_allow_30s_start() -> None:
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["readinessProbe"]["failureThreshold"] == 3
    # The kubelet's default of 1 s would fail a ready pod whose database answers in 1.5 s.
    assert container["readinessProbe"]["timeoutSeconds"] > health.CHECK_TIMEOUT
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 30


def test_a_new_revision_that_never_becomes_available_is_aborted() -> None:
    """The analyses start only once the new pods are available: a crash loop would never reach
    them, and would hang the rollout instead of rolling back (seed Step 9, rollback step 1)."""
    spec = _rollout()["spec"]
    assert spec["progressDeadlineAbort"] is True
    assert spec["progressDeadlineSeconds"] <= 300  # the seed's rollback time target: < 5 min


def test_disruptions_take_one_pod_at_a_time() -> None:
    [pdb] = _docs("pdb.yaml")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}


def test_every_pod_is_hardened_alike() -> None:
    """The migration Job's pod runs the same image with the same secrets as the Rollout's."""
    [job] = _docs("migrate-job.yaml")
    [synthetic] = _docs("synthetic-cronjob.yaml")
    [smoke_metric] = [m for m in _templates()["favorites-health"]["spec"]["metrics"]
                      if m["name"] == "smoke"]
    for name, pod in (("rollout", _rollout()["spec"]["template"]["spec"]),
                      ("migrate-job", job["spec"]["template"]["spec"]),
                      ("synthetic", synthetic["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
                      ("smoke", smoke_metric["provider"]["job"]["spec"]["template"]["spec"])):
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001,
                                          "runAsGroup": 10001,
                                          "seccompProfile": {"type": "RuntimeDefault"}}, name
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}}, name
            assert "memory" in container["resources"]["limits"], name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, name  # noqa: S108 -- the pod's only writable path
    assert job["spec"]["activeDeadlineSeconds"] > 0


def test_every_favorites_variable_in_the_manifests_is_a_real_setting() -> None:
    fields = set(Settings.model_fields)
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    names = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+", text))
    assert names
    for name in names:
        key = name.removeprefix(ENV_PREFIX).lower()
        if key.endswith("_file") and key.removesuffix("_file") in SECRET_FIELDS:
            continue
        if name == smoke.API_KEY_VARIABLE:  # read by `favorites smoke`, not by the service
            continue
        assert key in fields, f"{name} is not a setting"


def test_flag_rollout_starts_at_one_percent() -> None:
    configmaps = {d["metadata"]["name"]: d for d in _docs("configmap.yaml")}
    flags = yaml.safe_load(configmaps["favorites-flags"]["data"]["flags.json"])
    flag = flags["flags"]["enable_favorites_v2"]
    assert flag["defaultVariant"] == "off"
    weights = dict(flag["targeting"]["fractional"][1:])
    assert weights == {"on": 1, "off": 99}


def test_the_shipped_flag_file_loads_and_enables_about_one_percent(tmp_path: Path) -> None:
    """Through the service's own loader and evaluator, as a pod reads the mounted file."""
    configmaps = {d["metadata"]["name"]: d for d in _docs("configmap.yaml")}
    path = tmp_path / "flags.json"
    path.write_text(configmaps["favorites-flags"]["data"]["flags.json"])
    assert configmaps["favorites-config"]["data"]["FAVORITES_FLAGS_FILE"].endswith("/flags.json")
    flags = OpenFeatureFlags(path)
    flags.start()
    try:
        users = [uuid.UUID(int=n * 104_729 + 3) for n in range(10_000)]
        enabled = sum(flags.enabled(ENABLE_FAVORITES_V2, user) for user in users)
    finally:
        flags.close()
    assert 60 <= enabled <= 140, enabled  # 1 % of 10,000: 100 expected, ±4 standard deviations


# --------------------------------------------------------------------------------------------------
# Selectors, labels and port names agree across the manifests, Prometheus and the code

def test_services_and_pdb_select_the_rollout_pods_and_nothing_else() -> None:
    pod = _rollout_pod_labels()
    assert _rollout()["spec"]["selector"]["matchLabels"].items() <= pod.items()
    services = [d for d in _all_resources() if d["kind"] == "Service"]
    selectors = {d["metadata"]["name"]: d["spec"]["selector"] for d in services}
    [pdb] = _docs("pdb.yaml")
    selectors["pdb"] = pdb["spec"]["selector"]["matchLabels"]
    [job] = _docs("migrate-job.yaml")
    job_pod = job["spec"]["template"].get("metadata", {}).get("labels", {})
    for name, selector in selectors.items():
        assert selector, name
        assert selector.items() <= pod.items(), f"{name} does not select the Rollout's pods"
        assert not selector.items() <= job_pod.items(), f"{name} selects the migration Job's pod"
    strategy = _rollout()["spec"]["strategy"]["blueGreen"]
    assert {strategy["activeService"], strategy["previewService"]} <= _names("Service")


def test_the_metrics_port_is_the_code_s_admin_port() -> None:
    """FAVORITES_METRICS_PORT (what `favorites serve` listens on in production) is a named port of
    the container, and the admin Service targets that name."""
    configured = Settings(metrics_port=int(_configmap()["FAVORITES_METRICS_PORT"])).metrics_port
    assert _configmap()["FAVORITES_ENV"] == "production"  # else /metrics is on the main port instead
    port = _metrics_port()
    assert port["containerPort"] == configured
    names = [p["name"] for p in _container()["ports"]]
    assert len(names) == len(set(names))
    [admin] = [d for d in _all_resources()
               if d["kind"] == "Service" and d["metadata"]["name"] == "favorites-admin"]
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == [port["name"]]


def test_prometheus_keeps_the_rollout_pods_on_their_metrics_port() -> None:
    port = _metrics_port()["name"]
    scraped = _scraped_labels(_rollout_pod_labels("5f7d8c9b6d"), port, namespace="shop", pod="favorites-a")
    assert scraped is not None, "prometheus.yml drops the Rollout's pods (pod label or port name)"
    assert scraped["pod_template_hash"] == "5f7d8c9b6d"
    assert (scraped["namespace"], scraped["pod"]) == ("shop", "favorites-a")
    # Not the other port, not the migration Job, not a pod that has stopped.
    assert _scraped_labels(_rollout_pod_labels(), "http") is None
    [job] = _docs("migrate-job.yaml")
    assert _scraped_labels(job["spec"]["template"].get("metadata", {}).get("labels", {}), port) is None
    assert _scraped_labels(_rollout_pod_labels(), port, phase="Failed") is None


def test_no_service_is_scraped_as_well() -> None:
    """Scraping a Service reaches a random pod per scrape, and would count every series twice."""
    for resource in _all_resources():
        annotations = resource["metadata"].get("annotations", {})
        assert not any(key.startswith("prometheus.io/") for key in annotations), resource["metadata"]["name"]


def _exported_labels() -> set[str]:
    labels: set[str] = {"le", "__name__"}
    for metric in metrics.CATALOGUE:
        labels |= set(getattr(metric, "_labelnames", ()))
    return labels


_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^()]*)\)", re.IGNORECASE)
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _labels_used(expr: str) -> set[str]:
    text = _STRING.sub('""', expr)
    labels = {label.strip() for group in _GROUPING.findall(text)
              for label in group.split(",") if label.strip()}
    for block in _MATCHERS.findall(text):
        labels |= set(_MATCHER_LABEL.findall(block))
    return labels


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    import json

    for path in sorted(GRAFANA.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", target["expr"]
        for variable in dashboard["templating"]["list"]:
            query = variable.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", str(query), re.DOTALL)
            if variable.get("type") == "query" and match:
                yield f"{path.name}: ${variable['name']}", f"by ({match.group(2)}) ({match.group(1)})"


def test_every_label_the_rules_and_dashboards_use_reaches_the_series() -> None:
    """A label the service does not export must be a target label prometheus.yml really sets on
    the Rollout's pods (the blue/green `pod_template_hash` above all); otherwise the rules group
    by nothing and blue and green are never told apart."""
    target = _pod_target(_rollout_pod_labels(), _metrics_port()["name"])
    scraped = _relabel(target, _scrape_job()["relabel_configs"], filters=False)
    assert scraped is not None
    # cronjob: kube-state-metrics' label, for the synthetic check's alert.
    available = _exported_labels() | set(scraped) | {"job", "instance", "cronjob"}
    exprs = [(f"alerts.yml: {r.get('record') or r.get('alert')}", str(r["expr"])) for r in _rules()]
    exprs += list(_dashboard_exprs())
    problems = [f"{where}: {sorted(_labels_used(expr) - available)}"
                for where, expr in exprs if _labels_used(expr) - available]
    assert not problems, "labels no series carries:\n" + "\n".join(problems)
    # The per-revision aggregation the rules are written for.
    recorded = _recording_rules()
    for name in ("favorites:http_error_ratio:rate5m", "favorites:http_error_ratio:rate1m",
                 "favorites:http_requests_over_2s:ratio_rate1m"):
        assert {"namespace", "pod_template_hash"} <= _labels_used(recorded[name]), name
    dashboards = "\n".join(expr for _, expr in _dashboard_exprs())
    assert "pod_template_hash" in dashboards


def test_the_docs_name_the_port_and_pod_labels_of_the_manifests() -> None:
    port = _metrics_port()["name"]
    for path in [*DOCS.glob("*.md"), *DEPLOY.rglob("*.md")]:
        text = path.read_text()
        named = re.findall(r"(?:port named|container port) `([\w-]+)`", text)
        assert all(name == port for name in named), f"{path.name} names the metrics port {named}"
    observability = (DOCS / "observability.md").read_text()
    assert f"port named `{port}`" in observability
    assert "app.kubernetes.io/name: favorites" in observability


# --------------------------------------------------------------------------------------------------
# The rollout's analysis: the seed's triggers, for the new revision only

def _analyses() -> dict[str, dict[str, Any]]:
    strategy = _rollout()["spec"]["strategy"]["blueGreen"]
    return {"pre": strategy["prePromotionAnalysis"], "post": strategy["postPromotionAnalysis"]}


def _metrics_of(analysis: dict[str, Any]) -> dict[str, dict[str, Any]]:
    templates = _templates()
    return {m["name"]: m for ref in analysis["templates"]
            for m in templates[ref["templateName"]]["spec"]["metrics"]}


def _prometheus_queries() -> Iterator[tuple[str, dict[str, Any], str]]:
    for template, document in _templates().items():
        for metric in document["spec"]["metrics"]:
            if query := metric["provider"].get("prometheus", {}).get("query"):
                yield f"{template}/{metric['name']}", metric, str(query)


def test_blue_green_with_analysis_before_and_after_promotion() -> None:
    strategy = _rollout()["spec"]["strategy"]["blueGreen"]
    assert strategy["activeService"] == "favorites"
    assert strategy["previewService"] == "favorites-preview"
    analyses = _analyses()
    assert set(_metrics_of(analyses["pre"])) >= {"ready", "health-checks"}
    assert set(_metrics_of(analyses["post"])) >= {"ready", "health-checks", "error-rate", "p99-latency"}
    services = {name: {a["name"]: a.get("value") for a in analysis["args"]}["service"]
                for name, analysis in analyses.items()}
    assert services == {"pre": strategy["previewService"], "post": strategy["activeService"]}


def test_every_template_argument_is_supplied_and_declared() -> None:
    templates = _templates()
    for when, analysis in _analyses().items():
        supplied = {a["name"] for a in analysis["args"]}
        for ref in analysis["templates"]:
            template = templates[ref["templateName"]]["spec"]
            declared = {a["name"] for a in template["args"]}
            required = {a["name"] for a in template["args"] if "value" not in a and "valueFrom" not in a}
            assert required <= supplied, f"{when}: {ref['templateName']} needs {required - supplied}"
            used = set(re.findall(r"\{\{\s*args\.([\w-]+)\s*\}\}", yaml.safe_dump(template["metrics"])))
            assert used <= declared, f"{ref['templateName']} uses undeclared {used - declared}"


def test_the_analysis_measures_the_new_revision_only() -> None:
    """Argo passes the latest ReplicaSet's pod-template-hash; every query selects it, so the
    stable (blue) revision's traffic can neither abort nor hide a bad green."""
    for when, analysis in _analyses().items():
        args = {a["name"]: a for a in analysis["args"]}
        assert args["pod-template-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}, when
        assert args["namespace"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, when
    queries = list(_prometheus_queries())
    assert queries
    for where, _, query in queries:
        assert 'pod_template_hash="{{args.pod-template-hash}}"' in query, where
        assert 'namespace="{{args.namespace}}"' in query, where
    for template in _templates().values():
        for metric in template["spec"]["metrics"]:
            if url := metric["provider"].get("web", {}).get("url"):
                # The controller runs in its own namespace: a short Service name would not resolve.
                assert "{{args.service}}.{{args.namespace}}.svc" in url, url


def test_the_rollback_triggers_are_the_seed_s_and_the_analysis_reads_them() -> None:
    alerts = _trigger_alerts()
    recorded = _recording_rules()
    assert set(alerts) == {"error_rate", "p99_latency", "health_check"}

    error = alerts["error_rate"]
    assert error["for"] == SEED_FOR
    name, threshold = re.fullmatch(r"\s*([\w:]+)\s*>\s*([\d.]+)\s*", error["expr"]).groups()  # type: ignore[union-attr]
    assert float(threshold) == SEED_ERROR_RATE
    assert 'status=~"5.."' in recorded[name]

    latency = alerts["p99_latency"]
    assert latency["for"] == SEED_FOR
    name, threshold = re.fullmatch(r"\s*([\w:]+)\s*>\s*([\d.]+)\s*", latency["expr"]).groups()  # type: ignore[union-attr]
    assert float(threshold) == 0.01  # more than 1 % slower than X <=> p99 > X (X a bucket bound)
    assert f'le=~"{SEED_P99_SECONDS}|{SEED_P99_SECONDS}.0"' in recorded[name]
    assert SEED_P99_SECONDS in metrics.HTTP_BUCKETS
    assert "histogram_quantile" not in recorded[name]  # capped at the largest bucket: could never fail

    # Failed scrapes, or readiness answered with 503: "> 3" = 4 scrapes of either.
    health = alerts["health_check"]
    names = re.fullmatch(r"\s*([\w:]+)\s*==\s*0\s+or\s+([\w:]+)\s*==\s*0\s*",
                         health["expr"]).groups()  # type: ignore[union-attr]
    assert {re.search(r"\b(up|favorites_ready)\{", recorded[n]).group(1)  # type: ignore[union-attr]
            for n in names} == {"up", "favorites_ready"}
    for name in names:
        for window in re.findall(r"\[(\w+)\]", recorded[name]):
            assert _seconds(window) == (SEED_HEALTH_FAILURES + 1) * _scrape_interval()
    ready = recorded[names[1]] if "favorites_ready" in recorded[names[1]] else recorded[names[0]]
    assert f">= {SEED_HEALTH_FAILURES + 1}" in ready  # every one of the 4 scrapes, not fewer

    # No analysis query may rest on histogram_quantile(): it never exceeds the largest finite
    # bucket (2 s), so "p99 <= 2" on it could never fail.
    for where, _, query in _prometheus_queries():
        for name in set(re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", query)):
            assert "histogram_quantile" not in recorded.get(name, ""), f"{where}: {name} is capped at 2 s"

    # The analysis fails on the first measurement in which one of them fires for the new revision:
    # an alert fires only after its condition held for its whole `for`, so that is the seed's rule.
    reads = {}
    for where, metric, query in _prometheus_queries():
        assert f'alertname="{TRIGGER_ALERT}"' in query, where
        assert 'alertstate="firing"' in query, where
        [trigger] = re.findall(r'trigger="(\w+)"', query)
        reads[trigger] = metric
        assert metric["failureLimit"] == 0, where
        assert metric["successCondition"] == "result[0] == 0", where
        assert "or vector(0)" in query, where  # no alert is 0, not an empty result
    assert set(reads) == set(alerts)


def test_the_analysis_lasts_long_enough_for_the_seed_s_windows() -> None:
    post = _metrics_of(_analyses()["post"])
    for name in ("error-rate", "p99-latency"):
        metric = post[name]
        watched = (int(metric["count"]) - 1) * _seconds(metric["interval"])
        # A trigger needs `for` (5 m) after the revision's first traffic; watching twice as long
        # catches a revision that is bad from the start, and one that turns bad in the first minutes.
        assert watched >= 2 * _seconds(SEED_FOR), name
        assert _seconds(metric["interval"]) <= 60, name  # detected within a minute of firing
    ready = post["ready"]
    assert ready["consecutiveErrorLimit"] == SEED_HEALTH_FAILURES  # a 503 is a measurement error
    assert ready["failureLimit"] == SEED_HEALTH_FAILURES


def _substitute(query: str, args: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*args\.([\w-]+)\s*\}\}", lambda m: args[m.group(1)], query)


def test_the_analysis_queries_fail_only_the_bad_revision_and_only_after_5_minutes(tmp_path: Path) -> None:
    """The analysis queries themselves, with Argo's arguments filled in, against the real rules
    (promtool). Revision aaaa in shop is bad from its first request (6 % errors, 1.6 % of requests
    slower than 2 s, one pod failing its scrapes from 60 s); bbbb in shop is fine; bbbb in staging
    (same template, other namespace) is bad. A one-minute outage of cccc does not count."""
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).is_file():
        pytest.skip("promtool not installed (scripts/check-rules.sh installs it)")

    def labels(namespace: str, pod_hash: str) -> str:
        return (f'job="favorites", instance="{pod_hash}-1", namespace="{namespace}", '
                f'pod_template_hash="{pod_hash}"')

    def http(namespace: str, pod_hash: str, ok: str, failed: str) -> list[dict[str, str]]:
        target = labels(namespace, pod_hash)
        route = 'method="GET", path="/v1/users/{user_id}/favorites"'
        return [{"series": f'http_requests_total{{{target}, {route}, status="200"}}', "values": ok},
                {"series": f'http_requests_total{{{target}, {route}, status="500"}}', "values": failed}]

    def latency(namespace: str, pod_hash: str, within_2s: int) -> list[dict[str, str]]:
        target = labels(namespace, pod_hash)
        route = 'method="GET", path="/v1/users/{user_id}/favorites"'
        return [{"series": f'http_request_duration_seconds_bucket{{{target}, {route}, le="2.0"}}',
                 "values": f"0+{within_2s}x40"},
                {"series": f'http_request_duration_seconds_count{{{target}, {route}}}', "values": "0+250x40"}]

    def up(namespace: str, pod_hash: str, pod: str, values: str) -> dict[str, str]:
        return {"series": f'up{{job="favorites", instance="{pod}", namespace="{namespace}", '
                          f'pod_template_hash="{pod_hash}"}}', "values": values}

    series = [
        *http("shop", "aaaa", "0+235x40", "0+15x40"), *latency("shop", "aaaa", 246),
        up("shop", "aaaa", "aaaa-1", "1x40"), up("shop", "aaaa", "aaaa-2", "1 1 1 1 0x36"),
        *http("shop", "bbbb", "0+250x40", "0x40"), *latency("shop", "bbbb", 250),
        up("shop", "bbbb", "bbbb-1", "1x40"),
        *http("staging", "bbbb", "0+235x40", "0+15x40"), *latency("staging", "bbbb", 246),
        up("staging", "bbbb", "bbbb-9", "0x40"),
        *http("shop", "cccc", "0x4 0+250x36", "0+250x4 1000x36"),  # every request fails for 1 minute
    ]
    queries = {metric["name"]: query for _, metric, query in _prometheus_queries()}
    assert set(queries) == {"health-checks", "error-rate", "p99-latency"}

    def expect(eval_time: str, namespace: str, pod_hash: str, value: int, names: tuple[str, ...]
               ) -> list[dict[str, Any]]:
        args = {"namespace": namespace, "pod-template-hash": pod_hash}
        return [{"expr": _substitute(queries[name], args), "eval_time": eval_time,
                 "exp_samples": [{"labels": "{}", "value": value}]} for name in names]

    triggers = ("error-rate", "p99-latency")
    checks = [
        *expect("50s", "shop", "aaaa", 0, ("health-checks", *triggers)),
        *expect("2m", "shop", "aaaa", 1, ("health-checks",)),         # 4 failed scrapes in a row
        *expect("5m", "shop", "aaaa", 0, triggers),                   # pending: not 5 minutes yet
        *expect("5m30s", "shop", "aaaa", 1, triggers),
        *expect("9m", "shop", "bbbb", 0, ("health-checks", *triggers)),
        *expect("9m", "staging", "bbbb", 1, ("health-checks", *triggers)),
        *[check for t in ("1m", "3m", "5m30s", "8m") for check in expect(t, "shop", "cccc", 0, triggers)],
    ]
    tests = {
        "rule_files": [str(PROMETHEUS / "alerts.yml")],
        "evaluation_interval": "15s",
        "tests": [{"name": "analysis queries", "interval": "15s", "input_series": series,
                   "promql_expr_test": checks}],
    }
    path = tmp_path / "analysis.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# Shutdown: the grace period covers the drain and the in-flight requests

def test_termination_grace_period_covers_drain_and_in_flight_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: captured.update(kwargs))
    drain = Settings(drain_seconds=float(_configmap()["FAVORITES_DRAIN_SECONDS"])).drain_seconds
    # What `favorites serve` passes to uvicorn: how long in-flight requests get after the drain.
    cli._run_uvicorn(argparse.Namespace(host="127.0.0.1", port=8000, workers=1), Settings(), {})
    in_flight = captured["timeout_graceful_shutdown"]
    grace = _rollout()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    waits = bootstrap.WRITES_WAIT_SECONDS + bootstrap.TASKS_WAIT_SECONDS  # the shutdown's own
    assert drain > 0, "the pods must drain before they stop serving"
    # 5 s more to close pools and exporters.
    assert grace >= drain + in_flight + waits + 5, (grace, drain, in_flight, waits)


def test_drain_seconds_is_documented_with_its_default_and_the_manifest_s_value() -> None:
    text = (DOCS / "operations.md").read_text()
    default = Settings.model_fields["drain_seconds"].default
    [row] = [line for line in text.splitlines() if line.startswith("| `FAVORITES_DRAIN_SECONDS` |")]
    assert row.split("|")[2].strip() == f"{default:g}"
    section = text[text.index("## Shutdown and draining"):]
    assert f"sets {_configmap()['FAVORITES_DRAIN_SECONDS']}" in section
    grace = _rollout()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert "terminationGracePeriodSeconds" in section
    assert f"it is {grace} =" in section


# --------------------------------------------------------------------------------------------------
# Docs: the values the code emits, and commands that match the shipped manifests

def test_the_docs_list_every_circuit_breaker_dependency_the_code_emits() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    emitted = set(re.findall(r'set_circuit_breaker_state(?:,\s*|\(\s*)"(\w+)"', source))
    assert {"redis", "product_service", "ratelimit_redis"} <= emitted
    docs = (DOCS / "observability.md").read_text()
    [row] = [line for line in docs.splitlines() if line.startswith("| `circuit_breaker_state` |")]
    documented = set(re.findall(r"`(\w+)`", row.split("|")[4]))
    assert emitted <= documented, f"not documented: {sorted(emitted - documented)}"


def test_the_docs_say_prometheus_scrapes_are_not_counted_in_production() -> None:
    """`favorites serve` serves the admin port with prometheus-client's own server, outside the
    application and its middleware, so its /metrics requests are not in http_requests_total."""
    server, thread = exposition.start_admin_server(0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        scrapes = [httpx.get(url, timeout=5) for _ in range(3)]
        elsewhere = [httpx.get(f"http://127.0.0.1:{server.server_port}{path}", timeout=5)
                     for path in ("/", "/health/ready", "/metrics/", "/favicon.ico")]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert all(scrape.status_code == 200 for scrape in scrapes)
    assert "# TYPE http_requests_total counter" in scrapes[-1].text
    # Other tests in this process may have scraped an app's own /metrics route; these scrapes
    # must not add to it.
    counted = [[line for line in scrape.text.splitlines()
                if line.startswith("http_requests_total{") and 'path="/metrics"' in line]
               for scrape in scrapes]
    assert counted[0] == counted[-1]
    # Only /metrics: a probe or a scrape pointed at the wrong path must not look healthy.
    assert [answer.status_code for answer in elsewhere] == [404, 404, 404, 404]
    assert all("http_requests_total" not in answer.text for answer in elsewhere)
    docs = (DOCS / "observability.md").read_text()
    [row] = [line for line in docs.splitlines() if line.startswith("| `http_requests_total` |")]
    assert "Includes `/health/*` and `/metrics`" not in row
    assert "not counted in production" in row
    assert 'path="/metrics"' in row


RUNBOOKS = [DOCS / "observability.md", DOCS / "operations.md", K8S / "README.md", ROOT / "README.md"]
_KINDS = {"service": "Service", "services": "Service", "svc": "Service", "endpoints": "Service",
          "ep": "Service", "hpa": "HorizontalPodAutoscaler",
          "horizontalpodautoscaler": "HorizontalPodAutoscaler",
          "rollout": "Rollout", "rollouts": "Rollout", "ro": "Rollout", "configmap": "ConfigMap",
          "cm": "ConfigMap", "job": "Job", "cronjob": "CronJob", "cronjobs": "CronJob",
          "cj": "CronJob", "deployment": "Deployment", "deploy": "Deployment",
          "deployments": "Deployment", "pdb": "PodDisruptionBudget"}


# Options of kubectl (and its argo rollouts plugin) used in the runbooks that take a separate value.
_VALUE_FLAGS = {"-l", "--selector", "-o", "--output", "-p", "--patch", "--type", "-f", "--filename",
                "-n", "--namespace", "--since", "--tail", "--timeout", "-t", "--to-revision",
                "--replicas", "-c", "--container", "--max-log-requests"}


def _kubectl_commands() -> Iterator[tuple[str, list[str]]]:
    for path in RUNBOOKS:
        for line in path.read_text().splitlines():
            for match in re.finditer(r"kubectl\s[^`|\n]*", line):
                command = re.split(r"\s#|\s&&", match.group())[0].strip()
                try:
                    tokens = shlex.split(command)
                except ValueError:
                    tokens = command.split()
                yield f"{path.name}: {command}", tokens


def _shipped_pod_labels() -> list[dict[str, str]]:
    """The labels of every pod template shipped: the Rollout's first (with Argo's hash label)."""
    labels = [_rollout_pod_labels()]
    for cronjob in (d for d in _all_resources() if d["kind"] == "CronJob"):
        labels.append(cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"])
    return labels


def _command_problems(tokens: list[str]) -> list[str]:
    pods = _shipped_pod_labels()
    problems = []
    selectors = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("-l", "--selector")]
    selectors += [t.split("=", 1)[1] for t in tokens if t.startswith("--selector=")]
    for selector in selectors:
        terms = [term.partition("=")[::2] for term in selector.split(",")]
        if not any(all(key in pod and (value.startswith("<") or pod[key] == value)
                       for key, value in terms) for pod in pods):
            problems.append(f"no shipped pod template matches {selector}")
    words, files = [], []
    rest = iter(tokens[1:])
    for token in rest:
        if token in _VALUE_FLAGS:
            value = next(rest, "")
            if token in ("-f", "--filename"):
                files.append(value)
        elif not token.startswith("-"):
            words.append(token)
    problems += [f"no file {f}" for f in files if not (ROOT / f).exists()]
    if words[:2] == ["argo", "rollouts"]:
        rest = words[3:] if words[2:3] != ["get"] else words[4:]
        if rest and rest[0] not in _names("Rollout"):
            problems.append(f"no Rollout {rest[0]}")
        return problems
    if words[:1] == ["rollout"]:
        problems.append("`kubectl rollout` drives Deployments; a Rollout takes `kubectl argo rollouts`")
    if words[:1] == ["patch"] and words[1:2] and _KINDS.get(words[1].split("/")[0]) == "Service":
        problems.append("Argo Rollouts owns the Services' selectors; do not patch them")
    for i, word in enumerate(words):
        kind, slash, name = word.partition("/")
        names = [name] if slash else []
        if not slash and i > 0 and words[i - 1] in ("get", "describe", "patch", "delete", "scale", "edit"):
            names = [w for w in words[i + 1:] if "=" not in w]
        if kind.lower() not in _KINDS:
            continue
        resource_kind = _KINDS[kind.lower()]
        if resource_kind == "Deployment":
            problems.append("no Deployment is shipped (the workload is the Rollout)")
            continue
        for n in names:
            if not n.startswith("<") and "{" not in n and n not in _names(resource_kind):
                problems.append(f"no {resource_kind} {n}")
    return problems


def test_runbook_commands_name_the_shipped_resources_and_labels() -> None:
    commands = list(_kubectl_commands())
    assert len(commands) > 10
    problems = [f"{where}\n    {p}" for where, tokens in commands for p in _command_problems(tokens)]
    assert not problems, "\n".join(problems)
    texts = "\n".join(where for where, _ in commands)
    for verb in ("abort", "undo", "promote"):
        assert f"kubectl argo rollouts {verb} favorites" in texts, verb


# --------------------------------------------------------------------------------------------------
# The container image

def test_the_build_context_holds_what_the_image_copies_and_no_secrets() -> None:
    """.dockerignore excludes everything (``*``) and lets back exactly the files the Dockerfile
    copies: the embedded default's signing key (var/), .venv and .git never reach the builder."""
    dockerfile = (DEPLOY / "container" / "Dockerfile").read_text()
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = {source for args in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M)
              for source in args.split()}
    assert copied == allowed, (copied, allowed)
    assert not allowed & {"var", ".venv", ".git", "tests", "bench"}


def test_the_image_runs_as_a_numeric_non_root_user_and_checks_its_liveness() -> None:
    dockerfile = (DEPLOY / "container" / "Dockerfile").read_text()
    [user] = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert user.isdigit()
    assert int(user) != 0
    assert str(_rollout()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == user
    [check] = re.findall(r"^HEALTHCHECK .*\\\n.*$", dockerfile, re.M)
    assert "http://127.0.0.1:8000/health/live" in check
    assert re.findall(r"^FROM \$\{PYTHON_IMAGE\}", dockerfile, re.M), "one pinnable base image"


# --------------------------------------------------------------------------------------------------
# Alertmanager (amtool checks the routing itself in scripts/check-rules.sh)

def test_every_notify_value_of_the_rules_has_its_own_route() -> None:
    """A notify value without a route falls through to the default receiver: a page in Slack."""
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    used = {rule["labels"]["notify"] for group in rules["groups"] for rule in group["rules"]
            if "alert" in rule}
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    routed = {m.split("=", 1)[1].strip('"'): route["receiver"]
              for route in config["route"]["routes"] for m in route["matchers"]
              if m.startswith("notify=")}
    assert used == set(routed) == {"page", "slack", "deploy-pipeline"}
    receivers = {r["name"]: r for r in config["receivers"]}
    assert "pagerduty_configs" in receivers[routed["page"]]
    assert "slack_configs" in receivers[routed["slack"]]
    assert "webhook_configs" in receivers[routed["deploy-pipeline"]]
    text = (DEPLOY / "alertmanager" / "alertmanager.yml").read_text()
    assert not re.search(r"hooks\.slack\.com|routing_key:|api_url:", text)  # credentials are files
