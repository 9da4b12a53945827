"""Defaults live in one place: conf/simrec.yaml. The pydantic settings carry types and
validation only; MLproject passes nothing a user did not give; the model names and aliases
are written in the config alone."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest
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


def _pillow_format_lists(source: str) -> list[int]:
    """Lines where a tuple/list/set literal of two or more Pillow format names is written."""
    from PIL import Image

    Image.init()
    names = set(Image.OPEN)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Tuple | ast.List | ast.Set) and len(node.elts) >= 2:
            values = [getattr(element, "value", None) for element in node.elts]
            if all(isinstance(value, str) and value.upper() in names for value in values):
                found.append(node.lineno)
    return found


def test_the_decoder_formats_are_written_in_the_config_only() -> None:
    """Which image formats are decoded is serving/lake config; a caller that names none gets
    serving.image_formats from conf/simrec.yaml, not a list kept in code."""
    from simrec.images import configured_formats, open_image

    written = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted((REPO / "src").rglob("*.py"))
        for line in _pillow_format_lists(path.read_text())
    ]
    assert written == []
    assert configured_formats() == tuple(load_settings(DEFAULT_CONFIG).serving.image_formats)
    assert "TIFF" not in configured_formats()
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    with pytest.raises(ValueError, match="not one of the accepted formats"):
        open_image(buffer.getvalue(), "q")


def test_the_format_check_catches_a_list_written_again() -> None:
    source = (REPO / "src" / "simrec" / "images.py").read_text()
    source += '\nDEFAULT_FORMATS = ("PNG", "JPEG", "WEBP")\n'
    assert len(_pillow_format_lists(source)) == 1
    assert _pillow_format_lists('KINDS = ("flat", "hnsw")\nSPLITS = ["train", "test"]\n') == []
