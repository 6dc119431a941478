"""The monitoring kit: the alert rules pass ``promtool check rules``, fire on the failures
they name and stay quiet on a healthy service (``promtool test rules``), and every metric
the rules and the Grafana dashboard query exists in what a running dmz_api (both roles)
and the plugin's web app actually expose.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from devstack.dmz import DmzApi
from devstack.ports import free_port
from devstack.synapse import Synapse
from plugin.web import SweepMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "bastion-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "bastion.json"
GW = {"instance": "sbg:8450", "job": "dmz-api-gateway"}
REG = {"instance": "dmz:8450", "job": "dmz-api-registrar"}
BOT = {"instance": "maubot:29316", "job": "bastion-bot"}
# Names in an expression that are PromQL, not metrics.
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "increase", "irate", "time", "and", "or", "unless", "on",
    "ignoring", "group_left", "group_right", "offset", "histogram_quantile", "max", "min",
    "avg", "count", "clamp_min", "vector", "bool", "abs", "topk", "delta", "deriv", "scalar",
    "max_over_time", "min_over_time", "changes", "resets", "label_replace", "absent",
}  # fmt: skip


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make system-deps` installs it (Debian: prometheus)"
    return found


def run_promtool(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *argv], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label matchers, groupings, strings removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdw]?", w)}


def families(text: str) -> set[str]:
    """The metric families a /metrics page declares (its TYPE lines; not the ``_created``
    companions prometheus_client adds to counters)."""
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return {name for name in declared if not name.endswith("_created")}


def exposed_names(text: str) -> set[str]:
    """Every series name a /metrics page can give, from its TYPE lines and samples."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def firing(alert: str, at: str, *labels: dict[str, str], severity: str) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {**lab, "severity": severity}} for lab in labels],
    }


def quiet(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def test_the_alerts_fire_on_failures_and_not_on_a_healthy_stack(tmp_path: Path) -> None:
    # Annotations are templates promtool check validates; here only when and for whom.
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    other_gw = {"instance": "sbg2:8450", "job": "dmz-api-gateway"}
    other_bot = {"instance": "maubot2:29316", "job": "bastion-bot"}
    off_bot = {"instance": "maubot3:29316", "job": "bastion-bot"}
    case = {
        "interval": "1m",
        "input_series": [
            # One gateway loses its rules at minute 2 and its store at minute 3; the other
            # stays healthy (reads the store every minute).
            series("dmz_api_gateway_rules_loaded", GW, "1 1 0 0 0 0 0 0"),
            series("dmz_api_gateway_rules_loaded", other_gw, "1x8"),
            series("dmz_api_gateway_decisions_dropped_total", GW, "0 0 0 5 5 5 5 5"),
            series("dmz_api_gateway_decisions_dropped_total", other_gw, "0x8"),
            # The first gateway's disk drops below the decision log's floor at minute 2.
            series("dmz_api_gateway_decision_log_degraded", GW, "0 0 1 1 1 1 1 1"),
            series("dmz_api_gateway_decision_log_degraded", other_gw, "0x8"),
            series("dmz_api_gateway_decision_stream_lost_total", GW, "0 0 0 3 3 3 3 3"),
            series("dmz_api_gateway_decision_stream_lost_total", other_gw, "0x8"),
            series("dmz_api_gateway_rule_store_errors_total", GW, "0 0 0 1 2 3 4 5"),
            series("dmz_api_gateway_rule_store_errors_total", other_gw, "0x8"),
            series(
                "dmz_api_gateway_rule_store_last_read_timestamp_seconds",
                GW,
                "0 60 120 120 120 120 120 120",
            ),
            series("dmz_api_gateway_rule_store_last_read_timestamp_seconds", other_gw, "0+60x8"),
            # The registrar's homeserver calls start failing at minute 3.
            series(
                "dmz_api_registrar_homeserver_requests_total", {**REG, "outcome": "2xx"}, "0+10x8"
            ),
            series(
                "dmz_api_registrar_homeserver_requests_total",
                {**REG, "outcome": "5xx"},
                "0 0 0 1 1 1 1 1",
            ),
            # A bot whose sweep (every 5 min) stopped succeeding at 0, one that sweeps, one
            # with the sweep off.
            series("bastion_bot_sweep_last_success_timestamp_seconds", BOT, "0x20"),
            series("bastion_bot_sweep_interval_seconds", BOT, "300x20"),
            series("bastion_bot_sweep_last_success_timestamp_seconds", other_bot, "0+60x20"),
            series("bastion_bot_sweep_interval_seconds", other_bot, "300x20"),
            series("bastion_bot_sweep_last_success_timestamp_seconds", off_bot, "0x20"),
            series("bastion_bot_sweep_interval_seconds", off_bot, "0x20"),
        ],
        "alert_rule_test": [
            quiet("BastionGatewayFailingClosed", "2m"),  # pending for its first minute
            firing("BastionGatewayFailingClosed", "4m", GW, severity="critical"),
            quiet("BastionGatewayDecisionsDropped", "2m"),
            firing("BastionGatewayDecisionsDropped", "4m", GW, severity="warning"),
            quiet("BastionGatewayDecisionLogDegraded", "2m"),  # pending for its first minute
            firing("BastionGatewayDecisionLogDegraded", "4m", GW, severity="warning"),
            quiet("BastionGatewayDecisionStreamLost", "2m"),
            firing("BastionGatewayDecisionStreamLost", "4m", GW, severity="warning"),
            quiet("BastionGatewayRuleStoreUnreadable", "2m"),
            firing("BastionGatewayRuleStoreUnreadable", "4m", GW, severity="warning"),
            quiet("BastionRegistrarHomeserverErrors", "2m"),
            firing("BastionRegistrarHomeserverErrors", "4m", REG, severity="warning"),
            quiet("BastionBotSweepFailing", "14m"),  # within three intervals
            firing("BastionBotSweepFailing", "16m", BOT, severity="warning"),
        ],
    }
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [case]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = run_promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_metric_name_parser_sees_what_an_expression_selects() -> None:
    expr = (
        'sum by (instance, job) (increase(a_total{outcome=~"5xx|error"}[10m])) > 0 '
        "or time() - b_seconds > 3 * c and on(instance) d > 0"
    )
    assert metric_names(expr) == {"a_total", "b_seconds", "c", "d"}


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory, dmz_synapse: Synapse) -> dict[str, set[str]]:
    """Every name a running dmz_api with both roles serves, plus the plugin's sweep gauges."""
    workdir = tmp_path_factory.mktemp("metrics")
    config = {
        "registrar": {
            "homeserver": {
                "kind": "synapse",
                "url": dmz_synapse.base_url,
                "server_name": dmz_synapse.server_name,
                "admin_token": dmz_synapse.admin_token,
            },
            "secret": "metrics-test-secret-" + "m" * 24,
        },
        "gateway": {
            "server_name": dmz_synapse.server_name,
            "upstream": dmz_synapse.base_url,
            "listen": {"host": "127.0.0.1", "port": free_port()},
        },
    }
    with DmzApi(workdir, config) as api:
        api.call("POST", "/v1/tokens", {}, acting_user="@alice:corp.example")
        with urllib.request.urlopen(f"{api.base_url}/metrics", timeout=10) as response:
            text = response.read().decode()
    bot = SweepMetrics(
        SimpleNamespace(sweep_interval=300),  # type: ignore[arg-type]
        SimpleNamespace(last_success=0.0, last_attempt=0.0),  # type: ignore[arg-type]
    )
    bot_text = asyncio.run(bot.metrics(None)).text  # type: ignore[arg-type]
    assert isinstance(bot_text, str)
    return {
        "names": exposed_names(text) | exposed_names(bot_text),
        "families": families(text) | families(bot_text),
    }


@pytest.mark.slow
def test_every_metric_the_rules_use_exists(exposed: dict[str, set[str]]) -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        missing = names - exposed["names"] - {"up"}  # up: Prometheus's own, per scrape job
        assert not missing, (rule["alert"], missing)


@pytest.mark.slow
def test_every_metric_the_dashboard_queries_exists(exposed: dict[str, set[str]]) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert not names - exposed["names"], (expr, names - exposed["names"])
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        (metric,) = re.findall(r"label_values\((\w+),", variable["definition"])
        assert metric in exposed["names"], variable["name"]
    # docs/operations.md documents every metric family that is served.
    doc = (ROOT / "docs" / "operations.md").read_text()
    for family in exposed["families"]:
        assert f"`{family}`" in doc, family
