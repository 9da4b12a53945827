"""Execute the notebooks in notebooks/ top to bottom on a small data slice, as CI does.

Notebooks are Databricks source files (`# Databricks notebook source`, cells split by
`# COMMAND ----------`, `# MAGIC %md` cells as markdown) or `.ipynb`. Each runs in a fresh
IPython kernel of this interpreter, in sorted file order, in one shared workspace (a tmp folder
holding the lake and the MLflow store), so a later notebook finds what earlier ones produced.
The kernel gets `SIMREC_CONFIG=conf/simrec.yaml:conf/small.yaml:<workspace>/workspace.yaml`:
the defaults, the small-slice overlay, and the workspace's paths. Notebooks read it through
`load_settings()`.

    python tests/notebook_harness.py [notebooks/02_tune.py ...] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

REPO = Path(__file__).resolve().parents[1]
IKEA_DIR = REPO.parent / "shared" / "data" / "ikea"
NOTEBOOKS = REPO / "notebooks"
DEFAULT_CONFIG = REPO / "conf" / "simrec.yaml"
SMALL_OVERLAY = REPO / "conf" / "small.yaml"

DATABRICKS_HEADER = "# Databricks notebook source"
CELL_SEPARATOR = re.compile(r"^# COMMAND -+[ \t]*$", re.MULTILINE)
MAGIC_PREFIX = re.compile(r"^# MAGIC ?")
KERNEL_NAME = "simrec-notebooks"
CELL_TIMEOUT_S = 600


class NotebookFormatError(ValueError):
    """A file in notebooks/ that is not a notebook the harness (and Databricks) can run."""


def read_databricks_source(text: str, name: str = "<notebook>") -> nbformat.NotebookNode:
    """A Databricks source notebook as an nbformat notebook.

    `%md` cells become markdown; `%pip` cells become raw cells (cluster setup: locally the
    environment comes from scripts/install.sh); any other magic (`%sh`, `%sql`, `%run`...) is
    refused, because CI could not run it the way the cluster does.
    """
    if not text.startswith(DATABRICKS_HEADER):
        raise NotebookFormatError(f"{name}: does not start with {DATABRICKS_HEADER!r}")
    cells = []
    for chunk in CELL_SEPARATOR.split(text[len(DATABRICKS_HEADER) :]):
        lines = [
            line for line in chunk.strip("\n").splitlines() if not line.startswith("# DBTITLE")
        ]
        if not any(line.strip() for line in lines):
            continue
        magic = [bool(MAGIC_PREFIX.match(line)) for line in lines if line.strip()]
        if not any(magic):
            cells.append(new_code_cell("\n".join(lines).strip("\n")))
            continue
        if not all(magic):
            raise NotebookFormatError(f"{name}: a cell mixes `# MAGIC` lines with Python")
        body = [MAGIC_PREFIX.sub("", line) for line in lines]
        command, _, first_line = body[0].partition(" ")
        rest = "\n".join([first_line, *body[1:]]).strip("\n")
        if command in ("%md", "%md-sandbox"):
            cells.append(new_markdown_cell(rest))
        elif command == "%pip":
            cells.append(new_raw_cell("\n".join(body)))
        else:
            raise NotebookFormatError(f"{name}: unsupported magic {command!r}; use Python cells")
    return new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": KERNEL_NAME, "display_name": "Python", "language": "python"}
        },
    )


def read_notebook(path: Path) -> nbformat.NotebookNode:
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    if path.suffix == ".py":
        return read_databricks_source(path.read_text(), path.name)
    raise NotebookFormatError(f"{path.name}: notebooks are .py (Databricks source) or .ipynb")


def discover(folder: Path = NOTEBOOKS) -> list[Path]:
    """Every notebook in `folder`, in the order CI runs them (sorted by file name)."""
    return sorted(p for p in folder.iterdir() if p.suffix in (".py", ".ipynb") and p.is_file())


def code_of(notebook: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def _resolve(path: str | None) -> str | None:
    """A relative path of the default config resolves against the repository root, as it does
    for `simrec` run from the checkout."""
    if path is None or Path(path).is_absolute():
        return path
    return str((REPO / path).resolve())


def write_workspace_config(workspace: Path) -> list[Path]:
    """The config files for a run in `workspace`: defaults, small overlay, workspace paths."""
    defaults = yaml.safe_load(DEFAULT_CONFIG.read_text())
    overlay = {
        "lake": {"root": str(workspace / "lakehouse")},
        "mlflow": {
            "tracking_uri": f"sqlite:///{workspace / 'mlflow.db'}",
            "artifact_root": str(workspace / "mlruns"),
        },
        "fashion_mnist": {"download_dir": str(workspace / "downloads")},
        "catalog": {"source_dir": str(IKEA_DIR)},  # the local copy, never a download
    }
    source_dir = defaults["fashion_mnist"].get("source_dir")
    if source_dir:
        overlay["fashion_mnist"]["source_dir"] = _resolve(source_dir)
    path = workspace / "workspace.yaml"
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return [DEFAULT_CONFIG, SMALL_OVERLAY, path]


def kernel_environment(config_files: list[Path]) -> dict[str, str]:
    # The caller's stores must not leak in: everything a notebook touches is in the workspace.
    leaking = {
        "SIMREC_CONFIG",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "MLFLOW_EXPERIMENT_NAME",
    }
    env = {key: value for key, value in os.environ.items() if key not in leaking}
    python_path = [str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        {
            "SIMREC_CONFIG": os.pathsep.join(str(path) for path in config_files),
            "PYTHONPATH": os.pathsep.join(python_path),
            # `mlflow models serve` and friends exec tools from the venv's bin.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "MPLBACKEND": "Agg",
            "JUPYTER_PLATFORM_DIRS": "1",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
    )
    return env


def kernel_manager(kernels_dir: Path) -> AsyncKernelManager:
    """A kernel of this interpreter (the project's venv), whatever kernels Jupyter knows of."""
    spec_dir = kernels_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "simrec (notebook harness)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(kernels_dir)], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


@dataclass
class NotebookRun:
    path: Path
    seconds: float
    executed: Path  # the executed notebook, outputs included


class NotebookWorkspace:
    """One folder in which notebooks run in order, each at most once."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_files = write_workspace_config(root)
        self.env = kernel_environment(self.config_files)
        self.runs: dict[Path, NotebookRun] = {}
        self.failed: dict[Path, BaseException] = {}

    def run(self, path: Path) -> NotebookRun:
        if path in self.runs:
            return self.runs[path]
        if path in self.failed:
            raise RuntimeError(f"{path.name} already failed in this workspace") from self.failed[
                path
            ]
        notebook = read_notebook(path)
        started = time.perf_counter()
        client = NotebookClient(
            notebook,
            km=kernel_manager(self.root / "kernels"),
            timeout=CELL_TIMEOUT_S,
            startup_timeout=120,
            resources={"metadata": {"path": str(self.root)}},
        )
        try:
            client.execute(env=self.env, cleanup_kc=True)
        except BaseException as error:
            self.failed[path] = error
            raise
        finally:
            executed = self.root / "executed" / f"{path.stem}.ipynb"
            executed.parent.mkdir(exist_ok=True)
            nbformat.write(notebook, executed)
        outcome = NotebookRun(path, time.perf_counter() - started, executed)
        self.runs[path] = outcome
        return outcome

    def run_through(self, path: Path, notebooks: list[Path]) -> NotebookRun:
        """Run every notebook before `path` (in order) that has not run yet, then `path`."""
        for earlier in notebooks[: notebooks.index(path)]:
            try:
                self.run(earlier)
            except Exception as error:
                raise RuntimeError(
                    f"{path.name} needs {earlier.name}, which failed: {error}"
                ) from error
        return self.run(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook")
    parser.add_argument("--workspace", type=Path, help="default: a new tmp folder")
    args = parser.parse_args()
    notebooks = discover()
    chosen = [path.resolve() for path in args.notebooks] or notebooks
    workspace = NotebookWorkspace(args.workspace or Path(tempfile.mkdtemp(prefix="simrec-nb-")))
    print(f"workspace {workspace.root}\nSIMREC_CONFIG={workspace.env['SIMREC_CONFIG']}")
    for path in chosen:
        outcome = workspace.run_through(path, sorted({*notebooks, path}))
        print(f"{path.name}: ok in {outcome.seconds:.1f} s ({outcome.executed})")


if __name__ == "__main__":
    main()
