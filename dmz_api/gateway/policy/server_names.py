"""Server names as Synapse reads them, in one canonical spelling.

The one parser for every server name the gateway judges: the ``origin`` of an ``X-Matrix``
Authorization header, the server part of user IDs in antispam callbacks, the names and
globs in rules, and the ``origin`` of dry runs and decision queries.

What is accepted is what Synapse 1.163 accepts (``synapse.util.stringutils.
parse_and_validate_server_name``; the header as in ``synapse.federation.transport.server.
_base._parse_auth_header``):

* the port is everything after the last ``:``, read with Python's ``int()``: ``008448``,
  ``+8448``, `` 8448``, ``8_448`` are all port 8448 (no range check, as in Synapse);
* the host is an IPv6 literal in brackets, or dot-separated labels of ASCII letters,
  digits and ``-`` (so IPv4 literals too);
* in the header, a value starting with ``"`` loses its first and last character and its
  backslash escapes; parameters are split on ``,`` with spaces or tabs around it; each
  must have a ``=``, and ``origin``, ``key`` and ``sig`` must be present.

Canonical form (what rules match and the decision log records): the host in lower case,
without a trailing dot (accepted outside the header: DNS resolves ``example.org.`` as
``example.org``), an IPv6 literal compressed; the port as decimal digits without leading
zeros. ``canonical("Evil.Example.:008448") == "evil.example:8448"``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

# Synapse's VALID_HOST_REGEX (RFC 1035 section 2.3.1, approximately); \Z, not $.
_HOST = re.compile(r"\A[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*\Z")
# A glob's host: the same characters plus the wildcards * and ?.
_HOST_GLOB = re.compile(r"\A[0-9a-z\-.*?]{1,255}\Z")
_X_MATRIX = re.compile(r"^X-Matrix +", re.IGNORECASE)
_PARAM_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")
_ESCAPED = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class ServerName:
    """A parsed server name: ``host`` canonical, ``port`` None when absent."""

    host: str
    port: int | None

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def split(name: str) -> tuple[str, str | None]:
    """``host:port`` → (host, port text) as Synapse splits it; IPv6 literals keep their
    brackets (``[::1]`` has no port, ``[::1]:8448`` has)."""
    if name.endswith("]") or ":" not in name:
        return name, None
    host, _, port = name.rpartition(":")
    return host, port


def _port(text: str) -> int | None:
    """The port as Synapse reads it (``int()``), or None when it cannot be read."""
    try:
        return int(text)
    except ValueError:
        return None


def _host(host: str, *, trailing_dot: bool) -> str | None:
    if host.startswith("["):
        if not host.endswith("]") or "%" in host:
            return None
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    if trailing_dot and host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if len(host) > 255 or not _HOST.match(host):
        return None
    return host.lower()


@lru_cache(maxsize=4096)
def parse(name: str, *, trailing_dot: bool = True) -> ServerName | None:
    """The server name ``name`` names, or None when Synapse would refuse it.

    ``trailing_dot=False`` refuses ``example.org.`` as Synapse's header parser does.
    """
    host_text, port_text = split(name)
    port = None
    if port_text is not None:
        port = _port(port_text)
        if port is None:
            return None
    host = _host(host_text, trailing_dot=trailing_dot)
    if host is None:
        return None
    return ServerName(host, port)


def canonical(name: str) -> str | None:
    """``name`` in canonical spelling, or None when it is not a server name."""
    parsed = parse(name)
    return None if parsed is None else str(parsed)


def canonical_glob(pattern: str) -> str | None:
    """A server glob of a rule (``*.example.org``, ``localhost:8448``, ``host:*``) in
    canonical spelling, or None when it is neither a server name nor a glob of one.

    A pattern without wildcards is a server name and parsed as one; in a glob the host is
    lower-cased and loses a trailing dot, and a port is digits (read like a server name's
    port) or ``*``.
    """
    pattern = pattern.strip()
    if "*" not in pattern and "?" not in pattern:
        return canonical(pattern)
    host, port_text = split(pattern.lower())
    if "*" not in host and "?" not in host:
        # A server's host with a wildcard port (``[::1]:*``).
        name = canonical(host) if ":" not in host or host.startswith("[") else None
        if name is None:
            return None
        host = name
    else:
        if host.endswith(".") and not host.endswith(".."):
            host = host[:-1]
        if not host or not _HOST_GLOB.match(host) or ".." in host:
            return None
    if port_text is None or port_text == "*":
        return host if port_text is None else f"{host}:*"
    if not port_text.isascii() or not port_text.isdigit():
        return None
    return f"{host}:{int(port_text)}"


def server_of_user(user_id: str) -> str:
    """The raw server part of a Matrix user ID (``@u:host:port`` → ``host:port``)."""
    return user_id.partition(":")[2]


# ---- the X-Matrix Authorization header ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class XMatrixOrigin:
    """What a request's Authorization headers say about its origin.

    ``origin`` is canonical, ``raw`` as sent (only when it differs). ``problem`` is set when
    the request must be refused as malformed: an X-Matrix header that cannot be parsed or
    names an invalid server, or two headers naming different servers.
    """

    origin: str | None = None
    raw: str | None = None
    problem: str | None = None


_NONE = XMatrixOrigin()


def _strip_quotes(value: str) -> str:
    # As Synapse: a leading quote drops the first and the last character, closing or not.
    if value.startswith('"'):
        value = value[1:-1]
        return _ESCAPED.sub(r"\1", value) if "\\" in value else value
    return value


def parse_header(header: str) -> str | None:
    """The raw ``origin`` of one X-Matrix header value, or None when Synapse would answer
    "Malformed Authorization header" (the header must start with ``X-Matrix``)."""
    parts = _X_MATRIX.split(header, maxsplit=1)
    if len(parts) != 2:
        return None
    params: dict[str, str] = {}
    for param in _PARAM_SEPARATOR.split(parts[1]):
        key, sep, value = param.partition("=")
        if not sep:
            return None
        params[key.lower()] = value
    if "origin" not in params or "key" not in params or "sig" not in params:
        return None
    origin = _strip_quotes(params["origin"])
    return origin if parse(origin, trailing_dot=False) is not None else None


def is_x_matrix(header: str) -> bool:
    """Whether an Authorization header value claims to be X-Matrix (in any letter case)."""
    return header[:8].lower() == "x-matrix"


def x_matrix(authorization: Iterable[str]) -> XMatrixOrigin:
    """The origin of a request from every Authorization header value it carries.

    Synapse believes the *last* X-Matrix header, other servers may believe the first: a
    request whose headers name two different servers is refused rather than guessed at,
    and so is one with an X-Matrix header Synapse cannot parse (it would not be unsigned to
    Synapse, only unreadable to a rule).
    """
    found: XMatrixOrigin = _NONE
    for header in authorization:
        header = header.strip()
        if not is_x_matrix(header):
            continue
        raw = parse_header(header)
        if raw is None:
            return XMatrixOrigin(problem="an X-Matrix Authorization header cannot be parsed")
        origin = canonical(raw)
        assert origin is not None  # parse_header checked it
        if found.origin is None:
            found = XMatrixOrigin(origin, raw if raw != origin else None)
        elif found.origin != origin:
            return XMatrixOrigin(problem="conflicting X-Matrix origins")
    return found


__all__ = [
    "ServerName",
    "XMatrixOrigin",
    "canonical",
    "canonical_glob",
    "is_x_matrix",
    "parse",
    "parse_header",
    "server_of_user",
    "split",
    "x_matrix",
]
