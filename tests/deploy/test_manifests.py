"""The deployment artifacts say what the seed designs and name only settings that exist."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import yaml

from favorites.adapters.flags import OpenFeatureFlags
from favorites.config import ENV_PREFIX, SECRET_FIELDS, Settings
from favorites.domain.flags import ENABLE_FAVORITES_V2

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _container() -> dict[str, Any]:
    [rollout] = _docs("rollout.yaml")
    [container] = rollout["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_hpa_scales_2_to_10_at_70_percent_cpu() -> None:
    [hpa] = _docs("hpa.yaml")
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    [metric] = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == 70


def test_probes_match_the_health_endpoints_and_allow_30s_start() -> None:
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["readinessProbe"]["failureThreshold"] == 3
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 30


def test_blue_green_with_analysis_on_the_seed_triggers() -> None:
    [rollout] = _docs("rollout.yaml")
    strategy = rollout["spec"]["strategy"]["blueGreen"]
    assert strategy["activeService"] == "favorites"
    assert strategy["previewService"] == "favorites-preview"
    template = "favorites-rollback-triggers"
    assert strategy["prePromotionAnalysis"]["templates"][0]["templateName"] == template
    assert strategy["postPromotionAnalysis"]["templates"][0]["templateName"] == template
    [analysis] = _docs("analysis.yaml")
    metrics = {m["name"]: m for m in analysis["spec"]["metrics"]}
    assert metrics["error-rate"]["successCondition"] == "result[0] <= 0.05"
    assert metrics["p99-latency"]["successCondition"] == "result[0] <= 2"
    assert metrics["error-rate"]["count"] * 60 == 300  # 5 minutes of 1-minute samples
    assert metrics["health"]["failureLimit"] == 3


def test_analysis_queries_use_recording_rules_that_exist() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    [analysis] = _docs("analysis.yaml")
    for metric in analysis["spec"]["metrics"]:
        query = metric["provider"].get("prometheus", {}).get("query")
        if query:
            names = set(re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", query))
            assert names
            assert names <= recorded, names - recorded


def test_every_favorites_variable_in_the_manifests_is_a_real_setting() -> None:
    fields = set(Settings.model_fields)
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    names = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+", text))
    assert names
    for name in names:
        key = name.removeprefix(ENV_PREFIX).lower()
        if key.endswith("_file") and key.removesuffix("_file") in SECRET_FIELDS:
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
