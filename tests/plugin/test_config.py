"""The plugin config takes its defaults from its own base-config.yaml, whatever the loader gives.

maubot's server hands the plugin's ``base-config.yaml`` as the base; its standalone mode
hands its own example config's ``plugin_config`` (``{}``). Real standalone maubot is run
in ``test_mbp.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mautrix.util.config import RecursiveDict
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from plugin.config import Config, packaged_base

ROOT = Path(__file__).resolve().parents[2]


def loaded(user: dict[str, Any], base: CommentedMap | None) -> tuple[Config, list[Any]]:
    saved: list[Any] = []
    config = Config(
        load=lambda: CommentedMap(user),
        load_base=lambda: None if base is None else RecursiveDict(base, CommentedMap),
        save=saved.append,
    )
    config.load_and_update()
    return config, saved


def test_the_packaged_base_is_the_repositorys_base_config() -> None:
    assert packaged_base() == YAML().load((ROOT / "base-config.yaml").read_text())


def test_an_empty_base_as_in_standalone_mode_gets_every_default() -> None:
    for base in (CommentedMap(), None):
        config, saved = loaded({"control_rooms": ["!r:x"], "sweep_interval": 0}, base)
        assert config.control_rooms == frozenset({"!r:x"})
        assert config.sweep_interval == 0
        assert config.token_expires == 86400 and config.identity_mode == "synapse_admin"
        assert (config.command_prefix, config.bare_aliases) == ("", False)
        assert [p for p in config.problems() if not p.startswith("dmz.api_key")] == []
        assert saved, "maubot saves the filled-in config back"


def test_a_partial_base_keeps_its_values_and_gets_the_rest() -> None:
    config, _ = loaded({}, CommentedMap({"token_defaults": CommentedMap({"uses": 3})}))
    assert config.token_uses == 3
    assert config.token_expires == 86400
    assert config["dmz.timeout"] == "10s"
