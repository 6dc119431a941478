"""A typed reader over the config's YAML mappings that names the key path in every error.

``Section(data, "registrar").url("public_url")`` returns the value or raises
``ConfigError("registrar.public_url: must be an http(s) URL")``. Role config parsers and the
assembler (``dmz_api.config``) read through it; it knows no section.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yarl import URL

from .durations import parse_duration


class ConfigError(Exception):
    """One line: ``key.path: what is wrong``."""


_MISSING: Any = object()


class Section:
    """A typed reader over one mapping of the config that knows its own key path."""

    def __init__(
        self, data: Mapping[str, Any], path: builtins.str = "", base_dir: Path | None = None
    ) -> None:
        self.data = data
        self.path = path
        self.base_dir = base_dir or Path.cwd()

    def key(self, name: builtins.str) -> builtins.str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: builtins.str, problem: builtins.str) -> ConfigError:
        return ConfigError(f"{self.key(name)}: {problem}")

    def has(self, name: builtins.str) -> builtins.bool:
        return self.data.get(name) is not None

    def raw(self, name: builtins.str, default: Any = _MISSING) -> Any:
        value = self.data.get(name)
        if value is None:
            if default is _MISSING:
                raise self.error(name, "is required")
            return default
        return value

    def section(self, name: builtins.str, *, required: builtins.bool = True) -> Section | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.error(name, "is required")
            return None
        if not isinstance(value, Mapping):
            raise self.error(name, "must be a mapping")
        return Section(value, self.key(name), self.base_dir)

    def str(self, name: builtins.str, default: Any = _MISSING) -> builtins.str:
        value = self.raw(name, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, "must be a non-empty string")
        return value

    def int(
        self,
        name: builtins.str,
        default: Any = _MISSING,
        *,
        low: builtins.int = 0,
        high: builtins.int = 2**31,
    ) -> builtins.int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(name, f"must be a whole number from {low} to {high}")
        return value

    def float(
        self, name: builtins.str, default: Any = _MISSING, *, low: builtins.float = 0.0
    ) -> builtins.float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= low:
            raise self.error(name, f"must be a number above {low}")
        return float(value)

    def bool(self, name: builtins.str, default: Any = _MISSING) -> builtins.bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false")
        return value

    def duration(self, name: builtins.str, default: Any = _MISSING) -> builtins.int:
        try:
            return parse_duration(self.raw(name, default))
        except ValueError as e:
            raise self.error(name, str(e)) from None

    def url(self, name: builtins.str, default: Any = _MISSING) -> builtins.str:
        value = self.str(name, default)
        parsed = URL(value)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise self.error(name, "must be an http(s) URL")
        return value.rstrip("/")

    def list(self, name: builtins.str, default: Any = _MISSING) -> builtins.list[Any]:
        value = self.raw(name, default)
        if not isinstance(value, list):
            raise self.error(name, "must be a list")
        return value

    def choice(
        self, name: builtins.str, options: tuple[builtins.str, ...], default: Any = _MISSING
    ) -> builtins.str:
        value = self.raw(name, default)
        if value not in options:
            raise self.error(name, f"must be one of {', '.join(options)}")
        return str(value)

    def secret(self, name: builtins.str, *, required: builtins.bool = True) -> builtins.str | None:
        """A secret given inline (``name``) or in a file (``name_file``); never echoed back."""
        inline, file_key = self.data.get(name), f"{name}_file"
        if inline is not None and self.data.get(file_key) is not None:
            raise self.error(name, f"give either {name} or {file_key}, not both")
        if inline is not None:
            if not isinstance(inline, str) or not inline.strip():
                raise self.error(name, "must be a non-empty string")
            return inline.strip()
        if self.data.get(file_key) is not None:
            path = self.base_dir / self.str(file_key)
            try:
                value = path.read_text().strip()
            except OSError as e:
                raise self.error(file_key, f"cannot be read ({e.strerror})") from None
            if not value:
                raise self.error(file_key, "is empty")
            return value
        if required:
            raise self.error(name, f"is required ({name} or {file_key})")
        return None
