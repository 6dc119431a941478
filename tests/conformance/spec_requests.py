"""Every operation of the vendored Matrix spec (``spec/``), turned into concrete HTTP requests.

::

    operations = load_operations()                      # 202 at matrix-spec d0ba2aae
    served = synapse_serves()                           # which r0 / api/v1 spellings exist
    for request in build_requests(operations, variants, served=served):
        request.method, request.path, request.headers, request.body

``load_operations`` reads each file's ``servers`` base path, ``paths``, path and required
query parameters (``#/components/parameters`` references included), ``security`` and the
inline JSON example of the request body. ``build_requests`` spells each operation as the
spec does (``/_matrix/client/v3/...``) and, for client endpoints, also in the older eras
(``/_matrix/client/r0/...``, ``/_matrix/client/api/v1/...``, ``unstable``) where Synapse
serves them, fills path parameters with valid sample values (percent-encoded as clients send
them), and adds the headers a real peer sends: an ``X-Matrix`` Authorization for federation
endpoints, a Bearer token and a User-Agent for client endpoints. Every request carries a
unique ``X-Conformance-Request`` header, so the test can find it at the upstream.

Nothing here knows the gateway: the oracle (``oracle.py``) and the test decide what to
expect. A path parameter with a name this module has no sample for is an error, so a spec
update with a new kind of parameter is noticed rather than guessed at.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import yaml

SPEC_DIR = Path(__file__).parent / "spec"
_ROOT = Path(__file__).resolve().parents[2]  # the repository, for the child process
# libyaml's loader when PyYAML has it (ten times faster), else the pure-Python one.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
APIS = {"client-server": "client", "server-server": "federation"}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
READS = frozenset({"GET", "HEAD", "OPTIONS"})
REQUEST_ID = "X-Conformance-Request"
LOCAL_SERVER = "corp.example"

# One valid value per path parameter name used by the spec. Event types, rooms and state
# keys are varied by ``Variants`` instead.
SAMPLES: Mapping[str, str] = {
    "userId": "@alice:corp.example",
    "eventId": "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg",
    "txnId": "txn-1",
    "mediaId": "ascERGshawAWawugaAcauga",
    "serverName": "corp.example",
    "fileName": "report.pdf",
    "kind": "override",
    "ruleId": "conformance.rule",
    "type": "org.example.settings",
    "deviceId": "QBUAZIFURK",
    "roomAlias": "#lobby:corp.example",
    "version": "1",
    "sessionId": "sess-1",
    "keyName": "displayname",
    "protocol": "irc",
    "relType": "m.thread",
    "tag": "u.work",
    "appserviceId": "irc-bridge",
    "networkId": "irc",
    "filterId": "66",
    "receiptType": "m.read",
    "idpId": "oidc",
    "queryType": "profile",
}
# Parameters whose values ``Variants`` supplies.
VARIED = frozenset({"roomId", "roomIdOrAlias", "eventType", "stateKey"})


@dataclass(frozen=True)
class Operation:
    """One operation of the spec: ``method`` on ``base + template``."""

    api: str  # "client" or "federation": the spec's API the file belongs to
    file: str  # e.g. "client-server/room_send.yaml"
    operation_id: str
    method: str
    base: str  # the file's base path, e.g. "/_matrix/client/v3"
    template: str  # the path below ``base``, e.g. "/rooms/{roomId}/send/{eventType}/{txnId}"
    path_params: tuple[str, ...]
    query: tuple[tuple[str, str], ...]  # required query parameters with sample values
    body_type: str | None  # the request body's media type, None without one
    body_example: Any  # the inline JSON example of the body, None when there is none
    security: tuple[str, ...]  # security scheme names; () = unauthenticated

    @property
    def full_template(self) -> str:
        return self.base + self.template

    @property
    def key(self) -> str:
        """``METHOD /full/template``: how mismatches and known deviations name it."""
        return f"{self.method} {self.full_template}"


def _resolve(parameter: Mapping[str, Any], document: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = parameter.get("$ref")
    if ref is None:
        return parameter
    if not isinstance(ref, str) or not ref.startswith("#/components/parameters/"):
        raise ValueError(f"unsupported parameter reference {ref!r}")
    resolved: Mapping[str, Any] = document["components"]["parameters"][ref.rsplit("/", 1)[1]]
    return resolved


def _query_sample(parameter: Mapping[str, Any]) -> list[str]:
    example = parameter.get("example")
    if example is None:
        enum = parameter.get("schema", {}).get("enum")
        example = enum[0] if enum else "https://client.example/done"
    if isinstance(example, list):
        return [str(v) for v in example]
    return [str(example).lower() if isinstance(example, bool) else str(example)]


def _body(operation: Mapping[str, Any]) -> tuple[str | None, Any]:
    content: Mapping[str, Any] = operation.get("requestBody", {}).get("content", {})
    if not content:
        return None, None
    media_type, entry = next(iter(content.items()))
    schema = entry.get("schema", {})
    example = entry.get("example", schema.get("example"))
    if example is None and "examples" in entry:
        example = next(iter(entry["examples"].values())).get("value")
    return media_type, example


def _base_path(document: Mapping[str, Any], file: str) -> str:
    for server in document.get("servers", []):
        base = server.get("variables", {}).get("basePath", {}).get("default")
        if isinstance(base, str):
            return base.rstrip("/")
    raise ValueError(f"{file}: no servers[].variables.basePath.default")


@functools.cache
def load_operations(spec_dir: Path = SPEC_DIR) -> tuple[Operation, ...]:
    """Every operation of the client-server and server-server APIs, in file order (read
    once per process: parsing the spec takes a second or two)."""
    operations: list[Operation] = []
    for directory, api in APIS.items():
        for path in sorted((spec_dir / directory).glob("*.yaml")):
            file = f"{directory}/{path.name}"
            text = path.read_text(encoding="utf-8")
            document = yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader)
            paths: Mapping[str, Any] = document.get("paths") or {}
            if not paths:
                continue
            base = _base_path(document, file)
            for template, item in paths.items():
                # The spec keys a second operation on the same path with a trailing space
                # ("/rooms/{roomId}/invite ") to keep YAML keys unique.
                template = template.strip()
                for method in METHODS:
                    if method not in item:
                        continue
                    operation = item[method]
                    parameters = [_resolve(p, document) for p in operation.get("parameters", [])]
                    path_params = tuple(p["name"] for p in parameters if p["in"] == "path")
                    declared = tuple(re.findall(r"\{(\w+)\}", template))
                    if sorted(path_params) != sorted(declared):
                        raise ValueError(f"{file}: {method} {template}: path parameters differ")
                    query = tuple(
                        (p["name"], value)
                        for p in parameters
                        if p["in"] == "query" and p.get("required")
                        for value in _query_sample(p)
                    )
                    body_type, body_example = _body(operation)
                    security = tuple(
                        name for entry in operation.get("security", []) for name in entry
                    )
                    operations.append(
                        Operation(
                            api=api,
                            file=file,
                            operation_id=str(operation["operationId"]),
                            method=method.upper(),
                            base=base,
                            template=template,
                            path_params=declared,
                            query=query,
                            body_type=body_type,
                            body_example=body_example,
                            security=security,
                        )
                    )
    return tuple(operations)


# ---- eras ---------------------------------------------------------------------------

# (spelling in the spec, era, the era's spelling)
ERAS = (
    ("/_matrix/client/v3/", "r0", "/_matrix/client/r0/"),
    ("/_matrix/client/v3/", "api/v1", "/_matrix/client/api/v1/"),
    ("/_matrix/client/v3/", "unstable", "/_matrix/client/unstable/"),
    ("/_matrix/media/v3/", "r0", "/_matrix/media/r0/"),
)
# send_join, send_leave and invite were v1 before v2 replaced them (Synapse serves both).
FEDERATION_ERAS = (("/_matrix/federation/v2/", "v1", "/_matrix/federation/v1/"),)

Served = Callable[[str, str], bool]


def synapse_serves() -> Served:
    """``served(method, path)``: whether installed Synapse routes ``method path`` to a
    client or media servlet, i.e. which ``r0`` and ``api/v1`` spellings it still serves.

    The routes are read in a child process (``synapse_routes``): importing Synapse into the
    test process loads zope.interface, which breaks maubot's plugin tests that run later.
    """
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(_ROOT)!r}); "
            "from tests.conformance.spec_requests import synapse_routes; "
            "import json; print(json.dumps(synapse_routes()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    routes = [(method, re.compile(pattern)) for method, pattern in json.loads(found.stdout)]
    if len(routes) < 100:
        raise RuntimeError(f"only {len(routes)} Synapse client routes found")

    def served(method: str, path: str) -> bool:
        path = path.partition("?")[0]
        return any(m == method and pattern.match(path) for m, pattern in routes)

    return served


def synapse_routes() -> list[tuple[str, str]]:
    """Every (method, path regex) of Synapse's client and media servlets; imports Synapse.

    Each servlet class of ``synapse.rest.client`` and ``synapse.rest.media`` registers itself
    with a recorder, as it does with Synapse's HTTP server (``client_patterns`` builds the
    regexes), without being constructed. About 2 s.
    """
    import synapse.rest.client as client_package
    import synapse.rest.media as media_package
    from synapse.http.servlet import RestServlet

    routes: list[tuple[str, str]] = []

    class Recorder:
        def register_paths(
            self, method: str, patterns: Iterable[re.Pattern[str]], *_: object
        ) -> None:
            routes.extend((method, pattern.pattern) for pattern in patterns)

    modules = [
        f"{package.__name__}.{info.name}"
        for package in (client_package, media_package)
        for info in pkgutil.iter_modules(package.__path__)
    ]
    for name in modules:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if not (isinstance(value, type) and issubclass(value, RestServlet)):
                continue
            if value.__module__ != module.__name__:
                continue
            try:
                object.__new__(value).register(Recorder())
            except NotImplementedError:
                pass  # a base class (TransactionRestServlet) with nothing to register
    return routes


# ---- requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who sends a request: a remote server (``origin``; None is unsigned) for federation
    endpoints, a client application (``user_agent``) for client endpoints."""

    origin: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class Variants:
    """The values a request is generated for, each combination once."""

    rooms: Sequence[str]  # room IDs for {roomId}
    room_aliases: Sequence[str]  # extra values for {roomIdOrAlias}
    event_types: Sequence[str]  # for {eventType} of writes (reads get the first)
    state_keys: Sequence[str]  # for {stateKey}; "" gives the trailing-slash form
    origins: Sequence[str | None]  # federation senders; None sends no X-Matrix header
    user_agents: Sequence[str]  # client applications
    federation_user_agent: str = "Synapse/1.163.0"
    # operationId -> extra JSON bodies to send besides the spec's example.
    bodies: Mapping[str, Sequence[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class SpecRequest:
    """One concrete request of one operation."""

    id: str
    operation: Operation
    # "spec" (as the spec writes it), "r0", "api/v1", "unstable", "v1" (eras) or
    # "respelled" (a path parameter spelled another legal way)
    spelling: str
    method: str
    path: str  # raw request target: percent-encoded path and query
    params: Mapping[str, str]  # path parameter values, decoded
    identity: Identity
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    json_body: Any  # the body as JSON, None without a JSON body

    @property
    def origin(self) -> str | None:
        return self.identity.origin

    def row(self) -> str:
        who = self.identity.origin if self.operation.api == "federation" else None
        who = who or self.identity.user_agent or "unsigned"
        return f"{self.method} {self.path} [{who}]"


def x_matrix(origin: str, destination: str = LOCAL_SERVER) -> str:
    return (
        f'X-Matrix origin="{origin}",destination="{destination}",'
        'key="ed25519:a_conf",sig="c2lnbmF0dXJlIG5vdCBjaGVja2VkIGJ5IHRoZSBwcm94eQ"'
    )


def encode(value: str) -> str:
    """A path parameter as a client sends it: every reserved character percent-encoded."""
    return quote(value, safe="")


def encode_all(value: str) -> str:
    """Every character percent-encoded (``m%2Eroom%2E...``): a legal, rarer spelling."""
    return "".join(f"%{byte:02X}" for byte in value.encode("utf-8"))


def _fill(template: str, values: Mapping[str, str], encoded: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return encoded.get(name, encode(values[name]))

    return re.sub(r"\{(\w+)\}", replace, template)


def _param_choices(
    operation: Operation, variants: Variants
) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """(values, special encodings) for every combination of the varied parameters."""
    fixed: dict[str, str] = {}
    for name in operation.path_params:
        if name in VARIED:
            continue
        if name not in SAMPLES:
            raise KeyError(f"{operation.key}: no sample value for path parameter {name!r}")
        fixed[name] = SAMPLES[name]
    axes: list[list[tuple[str, str, str | None]]] = []
    write = operation.method not in READS
    choices: list[tuple[str, str, str | None]]
    for name in operation.path_params:
        if name == "roomId":
            choices = [(name, room, None) for room in variants.rooms]
            # ``!`` and ``:`` may also stand unencoded in a path segment (RFC 3986 pchar).
            choices += [(name, room, room) for room in variants.rooms[1:2]]
            axes.append(choices)
        elif name == "roomIdOrAlias":
            values = [*variants.rooms, *variants.room_aliases]
            axes.append([(name, value, None) for value in values])
        elif name == "eventType":
            types = variants.event_types if write else variants.event_types[:1]
            choices = [(name, t, None) for t in types]
            if write:
                # Percent-encoding of unreserved characters must not hide an event type.
                choices += [(name, t, encode_all(t)) for t in types[1:2]]
            axes.append(choices)
        elif name == "stateKey":
            axes.append([(name, key, None) for key in variants.state_keys])

    def combine(i: int, values: dict[str, str], special: dict[str, str]) -> Iterator[Any]:
        if i == len(axes):
            yield dict(values), dict(special)
            return
        for name, value, spelled in axes[i]:
            values[name] = value
            if spelled is not None:
                special[name] = spelled
            yield from combine(i + 1, values, special)
            special.pop(name, None)

    yield from combine(0, dict(fixed), {})


def _spellings(operation: Operation, path: str, served: Served | None) -> list[tuple[str, str]]:
    spellings = [("spec", path)]
    if operation.api == "federation":
        for current, era, old in FEDERATION_ERAS:
            if path.startswith(current):
                spellings.append((era, old + path[len(current) :]))
        return spellings
    if served is None:
        return spellings
    for current, era, old in ERAS:
        if path.startswith(current) and served(operation.method, old + path[len(current) :]):
            spellings.append((era, old + path[len(current) :]))
    return spellings


def _bodies(operation: Operation, variants: Variants) -> list[tuple[bytes | None, Any, str]]:
    """(raw body, JSON, media type) to send; [(None, None, "")] for no body."""
    if operation.body_type is None:
        return [(None, None, "")]
    if operation.body_type != "application/json":
        return [(b"conformance test body\n", None, operation.body_type)]
    examples = [operation.body_example if isinstance(operation.body_example, dict) else {}]
    examples += list(variants.bodies.get(operation.operation_id, ()))
    return [(json.dumps(e).encode(), e, "application/json") for e in examples]


def _identities(operation: Operation, variants: Variants) -> list[Identity]:
    if operation.api == "federation":
        ua = variants.federation_user_agent
        return [Identity(origin=o, user_agent=ua) for o in variants.origins]
    return [Identity(user_agent=ua) for ua in variants.user_agents]


def _headers(
    operation: Operation, identity: Identity, media_type: str, request_id: str
) -> list[tuple[str, str]]:
    headers = [(REQUEST_ID, request_id)]
    if operation.api == "federation":
        if identity.origin is not None:
            headers.append(("Authorization", x_matrix(identity.origin)))
    elif operation.security:
        headers.append(("Authorization", "Bearer syt_YWxpY2U_conformanceTokenXyz_0a1b2c"))
    if identity.user_agent is not None:
        headers.append(("User-Agent", identity.user_agent))
    if media_type:
        headers.append(("Content-Type", media_type))
    return headers


def build_requests(
    operations: Iterable[Operation], variants: Variants, *, served: Served | None = None
) -> list[SpecRequest]:
    """Every request of every operation for ``variants`` (eras where ``served`` says)."""
    requests: list[SpecRequest] = []
    for operation in operations:
        query = f"?{urlencode(operation.query)}" if operation.query else ""
        for values, special in _param_choices(operation, variants):
            path = _fill(operation.full_template, values, special)
            spelling_of_values = "respelled" if special else "spec"
            for spelling, spelled in _spellings(operation, path, served):
                for body, json_body, media_type in _bodies(operation, variants):
                    for identity in _identities(operation, variants):
                        request_id = f"r{len(requests)}"
                        requests.append(
                            SpecRequest(
                                id=request_id,
                                operation=operation,
                                spelling=spelling if spelling != "spec" else spelling_of_values,
                                method=operation.method,
                                path=spelled + query,
                                params=values,
                                identity=identity,
                                headers=tuple(
                                    _headers(operation, identity, media_type, request_id)
                                ),
                                body=body,
                                json_body=json_body,
                            )
                        )
    return requests


__all__ = [
    "ERAS",
    "REQUEST_ID",
    "SAMPLES",
    "Identity",
    "Operation",
    "SpecRequest",
    "Variants",
    "build_requests",
    "encode",
    "encode_all",
    "load_operations",
    "synapse_serves",
    "x_matrix",
]
