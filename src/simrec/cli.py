"""`simrec` command line: one thin command per pipeline step."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

app = typer.Typer(help="simrec: image-similarity product recommender.", no_args_is_help=True)
ingest_app = typer.Typer(help="Ingest data into Delta tables.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML config (default conf/simrec.yaml).")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting, e.g. --set train.epochs=3.")
]
RunOption = Annotated[
    str | None, typer.Option("--run-id", help="Training run (default: the newest finished one).")
]


def _settings(config: Path | None, overrides: list[str] | None):
    from simrec.config import load_settings

    return load_settings(config, overrides or [])


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@ingest_app.command("fashion-mnist")
def ingest_fashion(
    source: Annotated[Path | None, typer.Option(help="Folder with the four IDX .gz files.")] = None,
    max_rows: Annotated[
        int | None, typer.Option(help="Only the first N rows of each split.")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Fashion-MNIST (configured folder, Debian package, or verified download) → Delta."""
    from simrec.lake.fashion_mnist import DatasetFileError, ingest_fashion_mnist
    from simrec.lake.tables import Lakehouse

    settings = _settings(config, set_)
    if source is not None:
        settings = settings.with_overrides({"fashion_mnist.source_dir": str(source)})
    lake = Lakehouse(settings.lake.root)
    try:
        result = ingest_fashion_mnist(
            lake, settings.fashion_mnist, settings.lake.fashion_table, max_rows
        )
    except (DatasetFileError, OSError) as error:
        _fail(error)
    typer.echo(
        f"{result.name}: version {result.version}, {result.rows_added} new rows ({result.path})"
    )


@ingest_app.command("catalog")
def ingest_catalog_command(
    source: Annotated[
        Path | None, typer.Option(help="IKEA dataset folder (images/, text_data/).")
    ] = None,
    max_items: Annotated[int | None, typer.Option(help="Only the first N items (by id).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """IKEA catalog: items, room scenes and item-room pairs → three Delta tables."""
    from simrec.images import InvalidImageError
    from simrec.lake.catalog import ingest_catalog
    from simrec.lake.tables import Lakehouse

    settings = _settings(config, set_)
    lake = Lakehouse(settings.lake.root)
    try:
        results = ingest_catalog(
            lake, settings.catalog, settings.lake, source_dir=source, max_items=max_items
        )
    except (InvalidImageError, OSError, ValueError) as error:
        _fail(error)
    for result in results.values():
        typer.echo(f"{result.name}: version {result.version}, {result.rows_added} new rows")


ParamsOption = Annotated[
    Path | None,
    typer.Option(
        "--params",
        help="YAML of dotted overrides (e.g. best.yaml from `simrec tune`); --set still wins.",
        exists=True,
        dir_okay=False,
    ),
]


@app.command()
def train(
    table_version: Annotated[
        int | None, typer.Option(help="Delta version to train on (default latest).")
    ] = None,
    params: ParamsOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Train the similarity model on the Fashion-MNIST table at a pinned version."""
    from simrec.config import load_overrides_file, load_settings
    from simrec.lake.tables import Lakehouse, TableMissingError
    from simrec.model.train import train as train_model

    try:
        settings = load_settings(config)
        if params is not None:
            settings = settings.with_overrides(load_overrides_file(params))
        settings = settings.with_overrides(set_ or [])
    except ValueError as error:  # pydantic's ValidationError is a ValueError too
        _fail(error)
    lake = Lakehouse(settings.lake.root)
    try:
        table = lake.pin(settings.lake.fashion_table, table_version)
    except TableMissingError as error:
        _fail(error)
    result = train_model(settings, lake, table)
    typer.echo(
        f"run {result.run_id}: best epoch {result.best_epoch}, "
        f"validation Recall@1 {result.val_recall_at_1:.4f}; model {result.model_uri}"
    )


@app.command()
def tune(
    max_evals: Annotated[int | None, typer.Option(help="Trials in all.")] = None,
    parallelism: Annotated[int | None, typer.Option(help="Trials at a time (SparkTrials).")] = None,
    trials: Annotated[
        str | None, typer.Option(help="spark (SparkTrials) or local (sequential Trials).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Where to write the best knobs (default best.yaml).")
    ] = None,
    table_version: Annotated[
        int | None, typer.Option(help="Delta version to tune on (default latest).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Hyperopt search over tuning.space; each trial a nested MLflow run, scored on validation."""
    from simrec.lake.tables import Lakehouse, TableMissingError
    from simrec.tuning.search import NoSuccessfulTrialError
    from simrec.tuning.search import tune as run_search

    options = {
        "tuning.max_evals": max_evals,
        "tuning.parallelism": parallelism,
        "tuning.trials": trials,
    }
    try:
        settings = _settings(config, set_).with_overrides(
            {key: value for key, value in options.items() if value is not None}
        )
        lake = Lakehouse(settings.lake.root)
        table = lake.pin(settings.lake.fashion_table, table_version)
        result = run_search(settings, lake, table, best_params_path=output)
    except (ValueError, TableMissingError, NoSuccessfulTrialError) as error:
        _fail(error)
    typer.echo(f"{'trial':>5}  {'status':<9} {'val R@1':>7}  params / reason")
    for trial in result.trials:
        recall = f"{trial.val_recall_at_1:.4f}" if trial.val_recall_at_1 is not None else "-"
        detail = trial.failure or ", ".join(f"{k}={v}" for k, v in trial.params.items())
        typer.echo(f"{trial.tid:>5}  {trial.status:<9} {recall:>7}  {detail}")
    typer.echo(
        f"search run {result.run_id} ({result.backend}, {len(result.trials)} trials, "
        f"{len(result.failed)} failed, {result.search_seconds:.0f} s): best validation "
        f"Recall@1 {result.best_val_recall_at_1:.4f} → {result.best_params_path}"
    )
    typer.echo(f"train with it: simrec train --params {result.best_params_path}")


@app.command()
def index(run_id: RunOption = None, config: ConfigOption = None, set_: SetOption = None) -> None:
    """Embed the catalog with a run's model and build its faiss index."""
    from simrec.index.build import build_catalog_index
    from simrec.lake.tables import Lakehouse
    from simrec.runs import latest_run_id
    from simrec.tracking import setup_mlflow

    settings = _settings(config, set_)
    setup_mlflow(settings.mlflow)
    try:
        run_id = run_id or latest_run_id(settings.mlflow.experiment)
    except LookupError as error:
        _fail(error)
    result = build_catalog_index(settings, Lakehouse(settings.lake.root), run_id)
    typer.echo(f"run {run_id}: {settings.index.kind} index of {len(result.index)} items")


@app.command()
def evaluate(run_id: RunOption = None, config: ConfigOption = None, set_: SetOption = None) -> None:
    """Recall@k and MAP@R of test queries against the index, beside the raw-pixel baseline."""
    from simrec.evaluation.evaluate import evaluate as evaluate_run
    from simrec.lake.tables import Lakehouse
    from simrec.runs import latest_run_id
    from simrec.tracking import setup_mlflow

    settings = _settings(config, set_)
    setup_mlflow(settings.mlflow)
    try:
        run_id = run_id or latest_run_id(settings.mlflow.experiment, require_index=True)
    except LookupError as error:
        _fail(error)
    evaluate_run(settings, Lakehouse(settings.lake.root), run_id)


@app.command()
def recommend(
    image: Annotated[
        Path, typer.Option("--image", help="Query image file.", exists=True, dir_okay=False)
    ],
    k: Annotated[int, typer.Option("-k", help="How many similar items.")] = 5,
    run_id: RunOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Print the k most similar catalog items for an image file."""
    from simrec.images import InvalidImageError
    from simrec.recommend import recommend_for_image
    from simrec.runs import latest_run_id
    from simrec.tracking import setup_mlflow

    settings = _settings(config, set_)
    setup_mlflow(settings.mlflow)
    try:
        run_id = run_id or latest_run_id(settings.mlflow.experiment, require_index=True)
        results = recommend_for_image(settings, run_id, image, k)
    except (LookupError, InvalidImageError, ValueError) as error:
        _fail(error)
    typer.echo(f"{'rank':>4}  {'item id':<20} {'label':<14} distance")
    for result in results:
        typer.echo(
            f"{result.rank:>4}  {result.item_id:<20} {result.label_name:<14} {result.distance:.4f}"
        )


@app.command()
def pipeline(
    skip_catalog: Annotated[bool, typer.Option(help="Skip the IKEA catalog ingest.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """The main job: ingest, train, index and evaluate on the configured defaults."""
    from simrec.pipeline import run_pipeline

    run_pipeline(_settings(config, set_), with_catalog=not skip_catalog)


if __name__ == "__main__":
    app()
