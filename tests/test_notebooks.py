"""Every notebook in notebooks/ follows the convention and runs top to bottom on a small slice.

The harness (tests/notebook_harness.py) turns Databricks source notebooks into Jupyter
notebooks and executes them in one shared workspace, in file-name order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from notebook_harness import (
    NOTEBOOKS,
    NotebookFormatError,
    NotebookWorkspace,
    code_of,
    discover,
    read_databricks_source,
    read_notebook,
    write_workspace_config,
)

from simrec.config import load_settings
from simrec.lake.tables import Lakehouse

ALL_NOTEBOOKS = discover()

DATABRICKS_EXAMPLE = """# Databricks notebook source
# MAGIC %md
# MAGIC # Title
# MAGIC
# MAGIC Some *text*.

# COMMAND ----------

# MAGIC %pip install simrec

# COMMAND ----------

# DBTITLE 1,Load
from simrec.config import load_settings

settings = load_settings()

# COMMAND ----------

settings.train.epochs
"""


def test_databricks_source_becomes_markdown_raw_and_code_cells() -> None:
    notebook = read_databricks_source(DATABRICKS_EXAMPLE)
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds == ["markdown", "raw", "code", "code"]
    assert notebook.cells[0].source == "# Title\n\nSome *text*."
    assert notebook.cells[1].source == "%pip install simrec"
    assert notebook.cells[2].source.startswith("from simrec.config import load_settings")
    assert "DBTITLE" not in notebook.cells[2].source
    assert notebook.cells[3].source == "settings.train.epochs"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("print('no header')\n", "does not start with"),
        ("# Databricks notebook source\n# MAGIC %sh ls\n", "unsupported magic '%sh'"),
        ("# Databricks notebook source\n# MAGIC %md hi\nx = 1\n", "mixes"),
    ],
)
def test_notebooks_ci_cannot_run_like_the_cluster_are_refused(text: str, message: str) -> None:
    with pytest.raises(NotebookFormatError, match=message):
        read_databricks_source(text)


def test_ipynb_notebooks_are_read_as_they_are(tmp_path: Path) -> None:
    import nbformat

    path = tmp_path / "05_example.ipynb"
    nbformat.write(read_databricks_source(DATABRICKS_EXAMPLE), path)
    assert code_of(read_notebook(path)) == code_of(read_databricks_source(DATABRICKS_EXAMPLE))


def test_the_notebook_folder_holds_the_pipeline_steps() -> None:
    names = [path.name for path in ALL_NOTEBOOKS]
    assert {"01_ingest.py", "03_train.py", "04_evaluate.py"} <= set(names)
    assert all(name[:2].isdigit() and name[2] == "_" for name in names), names


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_follows_the_convention(path: Path) -> None:
    """Thin: a title, settings from `load_settings()` alone, no functions, classes or dbutils."""
    notebook = read_notebook(path)
    assert notebook.cells[0].cell_type == "markdown"
    assert notebook.cells[0].source.startswith("# "), "the first cell is a markdown title"
    calls_load_settings = False
    for source in code_of(notebook):
        tree = ast.parse(source)
        for node in ast.walk(tree):
            assert not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef), (
                f"{path.name}: `{getattr(node, 'name', '')}` is logic; put it in simrec and call it"
            )
            if isinstance(node, ast.Name):
                assert node.id != "dbutils", f"{path.name}: dbutils does not exist off Databricks"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_settings":
                assert not node.args and not node.keywords, (
                    f"{path.name}: call load_settings() without arguments, so that the "
                    "configuration (SIMREC_CONFIG; the small slice in CI) decides"
                )
                calls_load_settings = True
        assert "SIMREC_CONFIG" not in source, f"{path.name}: leave SIMREC_CONFIG to the caller"
    assert calls_load_settings, f"{path.name}: settings come from load_settings()"


def test_workspace_config_is_the_small_slice_inside_the_workspace(tmp_path: Path) -> None:
    settings = load_settings(":".join(str(path) for path in write_workspace_config(tmp_path)))
    assert settings.lake.root == tmp_path / "lakehouse"
    assert settings.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.catalog.source_dir.is_absolute()
    assert settings.fashion_mnist.max_rows_per_split is not None
    assert settings.train.epochs < load_settings().train.epochs
    # everything else is still the defaults
    assert settings.fashion_mnist.files == load_settings().fashion_mnist.files


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> NotebookWorkspace:
    return NotebookWorkspace(tmp_path_factory.mktemp("notebooks"))


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_top_to_bottom(workspace: NotebookWorkspace, path: Path) -> None:
    outcome = workspace.run_through(path, ALL_NOTEBOOKS)
    assert outcome.executed.exists()


@pytest.mark.slow
def test_notebooks_ran_on_the_small_slice(workspace: NotebookWorkspace) -> None:
    workspace.run_through(NOTEBOOKS / "01_ingest.py", ALL_NOTEBOOKS)
    settings = load_settings(workspace.env["SIMREC_CONFIG"])
    lake = Lakehouse(settings.lake.root)
    rows = lake.read(settings.lake.fashion_table, columns=["id"]).num_rows
    assert rows == 2 * settings.fashion_mnist.max_rows_per_split
    items = lake.read(settings.lake.items_table, columns=["id"]).num_rows
    assert items == settings.catalog.max_items
