"""Defaults live in one place: conf/simrec.yaml. The pydantic settings carry types and
validation only; MLproject passes nothing a user did not give; the model names and aliases
are written in the config alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from simrec.config import DEFAULT_CONFIG, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
CONFIG_MODULE = REPO / "src" / "simrec" / "config.py"
# IndexSettings keeps its defaults (code builds exact style indexes from kind + metric alone);
# SearchDimension's optional bounds are a distribution's shape, not config defaults.
ALLOWED = {"IndexSettings", "SearchDimension", "StyleBlockSettings"}


def _fields_with_defaults(source: str) -> list[str]:
    found = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef) or node.name in ALLOWED:
            continue
        if not any(getattr(base, "id", None) == "_Section" for base in node.bases):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.AnnAssign) or statement.value is None:
                continue
            value = statement.value
            is_field = isinstance(value, ast.Call) and getattr(value.func, "id", None) == "Field"
            carries_default = (
                not is_field
                or value.args
                or any(keyword.arg in ("default", "default_factory") for keyword in value.keywords)
            )
            if carries_default:
                found.append(f"{node.name}.{statement.target.id}")
    return found


def test_no_settings_field_carries_a_default() -> None:
    assert _fields_with_defaults(CONFIG_MODULE.read_text()) == []


def test_the_check_catches_a_default_written_again() -> None:
    source = CONFIG_MODULE.read_text().replace(
        "    fashion_table: str\n", '    fashion_table: str = "x"\n'
    )
    source = source.replace("    epochs: int\n", "    epochs: int = Field(12, ge=0)\n", 1)
    assert _fields_with_defaults(source) == ["LakeSettings.fashion_table", "TrainSettings.epochs"]


def test_the_yaml_alone_is_a_complete_valid_config() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert Settings.model_validate(raw) == load_settings(DEFAULT_CONFIG)


def test_model_names_and_aliases_are_written_in_the_config_only() -> None:
    settings = load_settings(DEFAULT_CONFIG)
    names = {
        settings.serving.registered_model,
        settings.promotion.style_registered_model,
        settings.serving.alias,
        settings.promotion.challenger_alias,
    }
    written = []
    for path in [*sorted((REPO / "src").rglob("*.py")), REPO / "MLproject"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for name in names:
                if re.search(rf"[\"']{re.escape(name)}[\"']", code):
                    written.append(f"{path.relative_to(REPO)}:{number}: {name}")
    assert written == []
