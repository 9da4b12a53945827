"""Usage: python scripts/strip_config_defaults.py src/simrec/config.py (then ruff format it).

Mechanical: drop every default from the settings fields of src/simrec/config.py (the YAML
holds them). SearchDimension's optional fields are a data schema, not defaults: kept."""

import ast
import sys
from pathlib import Path

path = sys.argv[1]
source = Path(path).read_text()
tree = ast.parse(source)
lines = source.splitlines(keepends=True)
offsets = [0]
for line in lines:
    offsets.append(offsets[-1] + len(line))


def pos(lineno, col):
    return offsets[lineno - 1] + col


edits = []
KEEP = {"SearchDimension", "_Section", "IndexSettings", "StyleBlockSettings"}
for node in tree.body:
    if not isinstance(node, ast.ClassDef) or node.name in KEEP:
        continue
    if not any(getattr(b, "id", None) == "_Section" for b in node.bases):
        continue
    for stmt in node.body:
        if not isinstance(stmt, ast.AnnAssign) or stmt.value is None:
            continue
        value = stmt.value
        start = pos(stmt.annotation.end_lineno, stmt.annotation.end_col_offset)
        end = pos(value.end_lineno, value.end_col_offset)
        replacement = ""
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "Field":
            keywords = [k for k in value.keywords if k.arg not in ("default", "default_factory")]
            if keywords:
                replacement = (
                    " = Field("
                    + ", ".join(ast.get_source_segment(source, k) for k in keywords)
                    + ")"
                )
        edits.append((start, end, replacement))
for start, end, replacement in sorted(edits, reverse=True):
    source = source[:start] + replacement + source[end:]
Path(path).write_text(source)
print(len(edits), "fields rewritten")
