"""The gateway's admin API: thin handlers over ``GatewayService``.

Scopes: ``rules`` for /v1/rules* and /v1/evaluate, ``decisions`` for /v1/decisions. Writes
accept ``If-Match: <version>`` (409 M_CONFLICT when stale), record ``X-Acting-User`` as the
author, and answer with the new ``version`` (also as ``ETag``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..auth import requires_scope, validate_user_id
from ..durations import parse_duration
from ..errors import InvalidParam, NotFound
from ..params import actor, json_body, query_choice, query_int, query_limit
from .policy import server_names
from .policy.matrix_paths import request_info
from .policy.model import Outcome, RequestClass, RequestInfo, Source
from .policy.rules import RULE_ID, parse_instant
from .service import GATEWAY, GatewayService, WriteResult
from .store import DecisionQuery


def service(request: web.Request) -> GatewayService:
    return request.app[GATEWAY]


def expected_version(request: web.Request) -> int | None:
    """The version named by If-Match (``12``, ``"12"`` or ``W/"12"``); None for none or ``*``."""
    value = request.headers.get("If-Match")
    if value is None:
        return None
    value = value.strip().removeprefix("W/").strip('"')
    if value == "*":
        return None
    if not value.isdigit() or len(value) > 18:
        raise InvalidParam("If-Match must be a ruleset version such as 12")
    return int(value)


def write_reason(request: web.Request, body: dict[str, Any]) -> str | None:
    reason = body.get("reason", request.query.get("reason"))
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > 500:
        raise InvalidParam("reason must be a string of at most 500 characters")
    return reason.strip() or None


def rule_id(request: web.Request) -> str:
    value = request.match_info["rule_id"]
    if not RULE_ID.match(value):
        raise NotFound(f"No rule {value[:64]}")
    return value


def write_response(result: WriteResult, *, status: int = 200) -> web.Response:
    body: dict[str, Any] = {"version": result.version, "changed": result.changed}
    if result.rule is not None:
        body["rule"] = result.rule.to_json()
    return web.json_response(body, status=status, headers={"ETag": f'"{result.version}"'})


@requires_scope("rules")
async def list_rules(request: web.Request) -> web.Response:
    version, rules = await service(request).rules()
    return web.json_response(
        {"version": version, "rules": [rule.to_json() for rule in rules]},
        headers={"ETag": f'"{version}"'},
    )


@requires_scope("rules")
async def export_rules(request: web.Request) -> web.Response:
    version, text = await service(request).export_rules()
    return web.Response(
        text=text,
        content_type="application/yaml",
        headers={
            "ETag": f'"{version}"',
            "Content-Disposition": f'attachment; filename="gateway-rules-v{version}.yaml"',
        },
    )


@requires_scope("rules")
async def import_rules(request: web.Request) -> web.Response:
    dry_run = query_choice(request, "dry_run", ("true", "false")) == "true"
    try:
        text = await request.text()
    except UnicodeDecodeError:
        raise InvalidParam("the document must be UTF-8 text") from None
    reason = request.query.get("reason")
    if reason is not None and len(reason) > 500:
        raise InvalidParam("reason must be a string of at most 500 characters")
    version, change = await service(request).import_rules(
        text,
        author=actor(request),
        expected=expected_version(request),
        reason=reason,
        dry_run=dry_run,
    )
    return web.json_response(
        {
            "version": version,
            "dry_run": dry_run,
            "changed": not change.empty,
            "diff": change.diff,
        },
        headers={"ETag": f'"{version}"'},
    )


@requires_scope("rules")
async def get_rule(request: web.Request) -> web.Response:
    wanted = rule_id(request)
    version, rules = await service(request).rules()
    for rule in rules:
        if rule.id == wanted:
            return web.json_response(
                {"version": version, "rule": rule.to_json()}, headers={"ETag": f'"{version}"'}
            )
    raise NotFound(f"No rule {wanted}")


@requires_scope("rules")
async def add_rule(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = await service(request).add_rule(
        body,
        author=actor(request),
        expected=expected_version(request),
        reason=write_reason(request, body),
    )
    return write_response(result, status=201)


@requires_scope("rules")
async def update_rule(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = await service(request).update_rule(
        rule_id(request),
        body,
        author=actor(request),
        expected=expected_version(request),
        reason=write_reason(request, body),
    )
    return write_response(result)


@requires_scope("rules")
async def delete_rule(request: web.Request) -> web.Response:
    body = await json_body(request, required=False)
    result = await service(request).delete_rule(
        rule_id(request),
        author=actor(request),
        expected=expected_version(request),
        reason=write_reason(request, body),
    )
    return write_response(result)


@requires_scope("rules")
async def promote_rule(request: web.Request) -> web.Response:
    body = await json_body(request, required=False)
    result = await service(request).promote(
        rule_id(request),
        author=actor(request),
        expected=expected_version(request),
        reason=write_reason(request, body),
    )
    return write_response(result)


@requires_scope("rules")
async def apply_preset(request: web.Request) -> web.Response:
    body = await json_body(request, required=False)
    result = await service(request).apply_preset(
        request.match_info["name"],
        body,
        author=actor(request),
        expected=expected_version(request),
        reason=write_reason(request, body),
    )
    return write_response(result, status=201 if result.created else 200)


@requires_scope("rules")
async def rules_history(request: web.Request) -> web.Response:
    versions = await service(request).history(
        limit=query_limit(request, default=50), before=query_int(request, "before")
    )
    return web.json_response({"versions": [v.to_json() for v in versions]})


def parse_since(value: str, now: float) -> int:
    """Milliseconds since the epoch, from ms digits, an ISO 8601 time or a duration ago."""
    value = value.strip()
    if value.isdigit() and len(value) <= 18:
        return int(value)
    try:
        return int((now - parse_duration(value)) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParam(
            "since must be a time in ms, an ISO 8601 time or a duration such as 15m or 24h"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@requires_scope("decisions")
async def list_decisions(request: web.Request) -> web.Response:
    since = request.query.get("since")
    origin = request.query.get("origin") or None
    user = request.query.get("user") or None
    query = DecisionQuery(
        outcome=query_choice(request, "decision", tuple(o.value for o in Outcome)),
        origin=(server_names.canonical(origin) or origin.lower()) if origin else None,
        user=validate_user_id(user, "user") if user else None,
        rule=request.query.get("rule") or None,
        request_class=query_choice(request, "class", tuple(c.value for c in RequestClass)),
        source=query_choice(request, "source", ("proxy", "authz", "antispam", "policy_server")),
        since=parse_since(since, time.time()) if since else None,
        before_id=query_int(request, "before"),
        event_id=_optional_query(request, "event_id", 255),
        limit=query_limit(request, default=50),
    )
    kind = query_choice(request, "kind", ("record", "aggregate")) or "record"
    if kind == "aggregate":
        if query.outcome not in (None, "allow") or query.rule is not None:
            raise InvalidParam("aggregates are of allows: decision=allow only, no rule")
        decisions = await service(request).allow_aggregates(query)
    else:
        decisions = await service(request).decisions(query)
    next_before = decisions[-1]["id"] if len(decisions) == query.limit else None
    return web.json_response({"decisions": decisions, "next_before": next_before})


def _optional_query(request: web.Request, name: str, limit: int) -> str | None:
    value = request.query.get(name) or None
    if value is not None and len(value) > limit:
        raise InvalidParam(f"{name} must be at most {limit} characters")
    return value


@requires_scope("decisions")
async def status(request: web.Request) -> web.Response:
    """The ruleset enforced and the state of the decision log (mode, disk, counts)."""
    return web.json_response(service(request).status())


def _optional_str(body: dict[str, Any], name: str, limit: int = 2000) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidParam(f"{name} must be a string of at most {limit} characters")
    return value


def describe_request(body: dict[str, Any]) -> RequestInfo:
    """The ``RequestInfo`` a dry-run body describes (see the OpenAPI document)."""
    known = {
        "class",
        "origin",
        "user",
        "method",
        "path",
        "event_type",
        "event_types",
        "room",
        "headers",
        "user_agent",
        "ip",
        "body",
        "at",
    }
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidParam(f"unknown field {unknown[0]!r}")
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidParam("headers must be an object of strings")
    lower = {k.lower(): v for k, v in headers.items()}
    method = (_optional_str(body, "method", 16) or "GET").upper()
    path = _optional_str(body, "path")
    user_agent = _optional_str(body, "user_agent", 1000)
    if user_agent is None:
        user_agent = lower.get("user-agent", "" if path is not None else None)
    ip = _optional_str(body, "ip", 64)
    class_name = _optional_str(body, "class", 16)
    if class_name is not None and class_name not in {c.value for c in RequestClass}:
        raise InvalidParam("class must be federation or client")
    content = body.get("body")
    if path is not None:
        auth = [v for k, v in headers.items() if k.lower() == "authorization"]
        info = request_info(
            method, path, auth, user_agent=user_agent, ip=ip, body=content, source=Source.EVALUATE
        )
        if class_name is not None and class_name != info.request_class.value:
            raise InvalidParam(
                f"class {class_name} contradicts the path (a {info.request_class} path)"
            )
    else:
        if class_name is None:
            raise InvalidParam("give a path, or a class (federation or client)")
        info = RequestInfo(
            RequestClass(class_name),
            method,
            "-",
            endpoint="described",
            user_agent=user_agent,
            ip=ip,
            source=Source.EVALUATE,
        )
    origin = _optional_str(body, "origin", 255)
    if origin is not None:
        name = server_names.canonical(origin)
        if name is None:
            raise InvalidParam("origin must be a server name such as partner.example")
        info.origin = name
        info.origin_raw = origin if origin != name else None
    user = _optional_str(body, "user", 255)
    if user is not None:
        info.user = validate_user_id(user, "user")
    types = list(info.event_types)
    event_type = _optional_str(body, "event_type", 255)
    if event_type is not None:
        types.append(event_type)
    more = body.get("event_types")
    if more is not None:
        if not isinstance(more, list) or not all(isinstance(t, str) for t in more):
            raise InvalidParam("event_types must be a list of strings")
        types += more
    info.event_types = tuple(dict.fromkeys(types))
    room = _optional_str(body, "room", 255)
    if room is not None:
        info.room = room
    at = parse_instant(body.get("at"), "at")
    if at is not None:
        info.at = at / 1000
    return info


@requires_scope("rules")
async def evaluate(request: web.Request) -> web.Response:
    info = describe_request(await json_body(request))
    return web.json_response(service(request).evaluate(info))


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/v1/rules", list_rules, name="gateway.rules")
    router.add_post("/v1/rules", add_rule, name="gateway.rules.add")
    router.add_get("/v1/rules/history", rules_history, name="gateway.rules.history")
    router.add_get("/v1/rules/export", export_rules, name="gateway.rules.export")
    router.add_post("/v1/rules/import", import_rules, name="gateway.rules.load")
    router.add_post("/v1/rules/preset/{name}", apply_preset, name="gateway.rules.preset")
    router.add_get("/v1/rules/{rule_id}", get_rule, name="gateway.rule")
    router.add_patch("/v1/rules/{rule_id}", update_rule, name="gateway.rule.update")
    router.add_delete("/v1/rules/{rule_id}", delete_rule, name="gateway.rule.delete")
    router.add_post("/v1/rules/{rule_id}/promote", promote_rule, name="gateway.rule.promote")
    router.add_post("/v1/evaluate", evaluate, name="gateway.evaluate")
    router.add_get("/v1/decisions", list_decisions, name="gateway.decisions")
    router.add_get("/v1/status", status, name="gateway.status")
