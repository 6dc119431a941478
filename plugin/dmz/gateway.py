"""The gateway's admin API, typed: versioned rules (``If-Match``), dry runs, decisions,
protected rooms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from attrs import frozen

from .transport import Acting, DmzError, RoleClient, as_int, as_str


@frozen
class GatewayRule:
    """One rule of the gateway's pipeline (docs/rules.md)."""

    id: str
    kind: str
    params: dict[str, Any]
    mode: str
    enabled: bool
    priority: int
    note: str
    author: str
    # ISO 8601 UTC, or None: the rule's life span (docs/rules.md, section 12).
    not_before: str | None = None
    expires_at: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> GatewayRule:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without a rule id")
        params = data.get("params")
        return cls(
            id=data["id"],
            kind=as_str(data.get("kind")) or "unknown",
            params=params if isinstance(params, dict) else {},
            mode=as_str(data.get("mode")) or "enforce",
            enabled=data.get("enabled") is not False,
            priority=as_int(data.get("priority"), 100),
            note=as_str(data.get("note")),
            author=as_str(data.get("author")),
            not_before=as_str(data.get("not_before")) or None,
            expires_at=as_str(data.get("expires_at")) or None,
        )


@frozen
class Ruleset:
    version: int
    rules: tuple[GatewayRule, ...]

    def get(self, rule_id: str) -> GatewayRule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)


@frozen
class RuleWrite:
    """The answer to a rule write: the version after it, and whether it changed anything."""

    version: int
    changed: bool
    rule: GatewayRule | None


class Gateway(RoleClient):
    """The gateway's admin API: rules (versioned, If-Match), dry runs, decisions."""

    role = "gateway"

    async def rules(self, acting: Acting) -> Ruleset:
        data = await self.request("GET", "/v1/rules", acting=acting)
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without a ruleset version")
        rules = tuple(GatewayRule.from_json(item) for item in self.items(data, "rules"))
        return Ruleset(version, rules)

    async def _write(
        self,
        method: str,
        path: str,
        acting: Acting,
        version: int,
        body: Mapping[str, Any] | None = None,
    ) -> RuleWrite:
        data = await self.request(method, path, acting=acting, body=body, if_match=version)
        data = data if isinstance(data, dict) else {}
        new_version = data.get("version")
        if not isinstance(new_version, int) or isinstance(new_version, bool):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without a ruleset version")
        rule = data.get("rule")
        return RuleWrite(
            version=new_version,
            changed=data.get("changed") is not False,
            rule=GatewayRule.from_json(rule) if isinstance(rule, dict) else None,
        )

    async def add_rule(self, acting: Acting, spec: Mapping[str, Any], *, version: int) -> RuleWrite:
        return await self._write("POST", "/v1/rules", acting, version, spec)

    async def update_rule(
        self, acting: Acting, rule_id: str, patch: Mapping[str, Any], *, version: int
    ) -> RuleWrite:
        return await self._write("PATCH", _rule_path(rule_id), acting, version, patch)

    async def remove_rule(self, acting: Acting, rule_id: str, *, version: int) -> RuleWrite:
        return await self._write("DELETE", _rule_path(rule_id), acting, version)

    async def promote(self, acting: Acting, rule_id: str, *, version: int) -> RuleWrite:
        return await self._write("POST", f"{_rule_path(rule_id)}/promote", acting, version)

    async def apply_preset(self, acting: Acting, name: str, *, version: int) -> RuleWrite:
        path = f"/v1/rules/preset/{quote(name, safe='')}"
        return await self._write("POST", path, acting, version)

    async def export_rules(self, acting: Acting) -> str:
        """The whole ruleset as the gateway's YAML document (docs/rules.md, section 13)."""
        text = await self.request("GET", "/v1/rules/export", acting=acting, text=True)
        return str(text)

    async def history(self, acting: Acting, *, limit: int) -> list[dict[str, Any]]:
        data = await self.request(
            "GET", "/v1/rules/history", acting=acting, params={"limit": str(limit)}
        )
        return [item for item in self.items(data, "versions") if isinstance(item, dict)]

    async def evaluate(self, acting: Acting, described: Mapping[str, Any]) -> dict[str, Any]:
        data = await self.request("POST", "/v1/evaluate", acting=acting, body=described)
        if not isinstance(data, dict) or not isinstance(data.get("decision"), dict):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without a decision")
        return data

    async def decisions(
        self,
        acting: Acting,
        *,
        outcome: str | None = None,
        origin: str | None = None,
        since: str | None = None,
        rule: str | None = None,
        limit: int = 20,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        query = (
            ("kind", kind),
            ("decision", outcome),
            ("origin", origin),
            ("since", since),
            ("rule", rule),
        )
        params = {key: value for key, value in query if value}
        params["limit"] = str(limit)
        data = await self.request("GET", "/v1/decisions", acting=acting, params=params)
        return [item for item in self.items(data, "decisions") if isinstance(item, dict)]

    async def status(self, acting: Acting) -> dict[str, Any]:
        """``GET /v1/status``: the ruleset enforced and the decision log's state."""
        data = await self.request("GET", "/v1/status", acting=acting)
        return data if isinstance(data, dict) else {}

    # ---- protected rooms (docs/rules.md, "Protected rooms") ---------------------------

    async def protected_rooms(self, acting: Acting) -> list[dict[str, Any]]:
        data = await self.request("GET", "/v1/rooms", acting=acting)
        return [item for item in self.items(data, "rooms") if isinstance(item, dict)]

    async def protect_room(
        self, acting: Acting, room_id: str, protections: Mapping[str, bool]
    ) -> dict[str, Any]:
        data = await self.request("PUT", _room_path(room_id), acting=acting, body=protections)
        return _room(data)

    async def unprotect_room(self, acting: Acting, room_id: str) -> dict[str, Any]:
        return _room(await self.request("DELETE", _room_path(room_id), acting=acting))

    async def room_desired(self, acting: Acting, room_id: str) -> dict[str, Any]:
        data = await self.request("GET", f"{_room_path(room_id)}/desired", acting=acting)
        if not isinstance(data, dict) or not isinstance(data.get("power_levels"), dict):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without a desired state")
        return data

    async def room_check(
        self, acting: Acting, room_id: str, state: Mapping[str, Any]
    ) -> dict[str, Any]:
        data = await self.request(
            "POST", f"{_room_path(room_id)}/check", acting=acting, body={"state": state}
        )
        if not isinstance(data, dict) or not isinstance(data.get("differences"), list):
            raise DmzError(200, "M_BAD_JSON", "the gateway answered without differences")
        return data


def _room_path(room_id: str) -> str:
    return f"/v1/rooms/{quote(room_id, safe='')}"


def _room(data: Any) -> dict[str, Any]:
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, dict) or not isinstance(room.get("room_id"), str):
        raise DmzError(200, "M_BAD_JSON", "the gateway answered without a room")
    return room


def _rule_path(rule_id: str) -> str:
    return f"/v1/rules/{quote(rule_id, safe='')}"
