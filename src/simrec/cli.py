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
style_app = typer.Typer(
    help="Complete the look: Gram-matrix style recommender across categories.",
    no_args_is_help=True,
)
app.add_typer(style_app, name="style")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML config (default conf/simrec.yaml).")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting, e.g. --set train.epochs=3.")
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(help="File holding the bearer token (else $SIMREC_API_TOKEN).", dir_okay=False),
]
RunOption = Annotated[
    str | None, typer.Option("--run-id", help="Training run (default: the newest finished one).")
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Registered model version, models:/NAME@ALIAS or models:/NAME/N "
        "(default models:/<serving.registered_model>@<serving.alias>).",
    ),
]


PromoteOption = Annotated[
    bool,
    typer.Option(
        "--promote/--no-promote", help="Run the promotion gate (--no-promote: stay challenger)."
    ),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Promote even when the gate refuses (recorded as forced).")
]


def _settings(config: Path | None, overrides: list[str] | None):
    from simrec.config import load_settings

    try:
        return load_settings(config, overrides or [])
    except (OSError, ValueError) as error:
        _fail(error)


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _model_uri(settings, model_uri: str | None) -> str:
    serving = settings.serving
    return model_uri or f"models:/{serving.registered_model}@{serving.alias}"


def _run_id(settings, run_id: str | None, require_index: bool = False) -> str:
    """`run_id`, or the newest finished training run; MLflow is set up either way."""
    from simrec.runs import latest_run_id
    from simrec.tracking import setup_mlflow

    setup_mlflow(settings.mlflow)
    try:
        return run_id or latest_run_id(settings.mlflow.experiment, require_index=require_index)
    except LookupError as error:
        _fail(error)


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show other libraries' INFO logs.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and results, no progress.")
    ] = False,
) -> None:
    """simrec's own progress (INFO of the `simrec` loggers) is shown unless --quiet."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("simrec").setLevel(logging.WARNING if quiet else logging.INFO)


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
    from simrec.lake.tables import Lakehouse, TableConflictError

    settings = _settings(config, set_)
    if source is not None:
        settings = settings.with_overrides({"fashion_mnist.source_dir": str(source)})
    lake = Lakehouse(settings.lake.root)
    try:
        result = ingest_fashion_mnist(
            lake, settings.fashion_mnist, settings.lake.fashion_table, max_rows
        )
    except (DatasetFileError, OSError, TableConflictError) as error:
        _fail(error)
    typer.echo(
        f"{result.name}: version {result.version}, {result.rows_added} new rows ({result.path})"
    )


@ingest_app.command("catalog")
def ingest_catalog_command(
    source: Annotated[
        Path | None,
        typer.Option(help="IKEA dataset folder (images/, text_data/); default catalog.source_dir."),
    ] = None,
    max_items: Annotated[int | None, typer.Option(help="Only the first N items (by id).")] = None,
    sync: Annotated[
        bool,
        typer.Option(
            "--sync",
            "--prune",
            help="Also delete the items, rooms and pairs the source no longer has.",
        ),
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """IKEA catalog → three Delta tables: new rows inserted, changed ones updated (--sync:
    missing ones deleted), all three tables or none. Downloads the dataset when there is no
    local copy."""
    from simrec.images import InvalidImageError
    from simrec.lake.catalog import ingest_catalog
    from simrec.lake.ikea_download import CITATION, LICENCE, ensure_catalog
    from simrec.lake.tables import Lakehouse, TableConflictError
    from simrec.lake.transaction import IngestCommitError

    settings = _settings(config, set_)
    lake = Lakehouse(settings.lake.root)
    try:
        if source is None and settings.catalog.source_dir is None:
            copy = ensure_catalog(settings.catalog)
            source = copy.folder
            typer.echo(f"IKEA dataset: {source}{' (downloaded)' if copy.downloaded else ''}")
            typer.echo(f"{LICENCE}\n{CITATION}")
        results = ingest_catalog(
            lake, settings.catalog, settings.lake, source, max_items=max_items, prune=sync
        )
    except (InvalidImageError, OSError, ValueError, TableConflictError, IngestCommitError) as error:
        _fail(error)
    for result in results.values():
        typer.echo(result.summary())


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
    distributed: Annotated[
        bool, typer.Option("--distributed", help="Horovod data-parallel on the Spark cluster.")
    ] = False,
    num_proc: Annotated[
        int | None,
        typer.Option("--num-proc", help="Horovod processes (default distributed.num_proc)."),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Train the similarity model on the Fashion-MNIST table at a pinned version."""
    from simrec.config import load_overrides_file, load_settings
    from simrec.lake.tables import Lakehouse, TableMissingError

    if num_proc is not None and not distributed:
        _fail(ValueError("--num-proc needs --distributed"))
    try:
        settings = load_settings(config)
        if params is not None:
            settings = settings.with_overrides(load_overrides_file(params))
        settings = settings.with_overrides(set_ or [])
        if num_proc is not None:
            settings = settings.with_overrides({"distributed.num_proc": num_proc})
    except ValueError as error:  # pydantic's ValidationError is a ValueError too
        _fail(error)
    lake = Lakehouse(settings.lake.root)
    try:
        table = lake.pin(settings.lake.fashion_table, table_version)
    except TableMissingError as error:
        _fail(error)
    if distributed:
        from simrec.distributed.train import train_distributed

        try:
            result = train_distributed(settings, lake, table)
        except ValueError as error:
            _fail(error)
        typer.echo(
            f"{result.num_proc} processes: {result.images_per_second:.0f} images/s "
            f"(all ranks, after the first epoch)"
        )
    else:
        from simrec.model.train import train as train_model

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
    """Embed the catalog with a run's model (exported as a bundle exports it) into an index."""
    from simrec.index.build import build_catalog_index
    from simrec.lake.tables import Lakehouse

    settings = _settings(config, set_)
    run_id = _run_id(settings, run_id)
    result = build_catalog_index(settings, Lakehouse(settings.lake.root), run_id)
    typer.echo(f"run {run_id}: {result.index.settings.kind} index of {len(result.index)} items")


@app.command()
def evaluate(run_id: RunOption = None, config: ConfigOption = None, set_: SetOption = None) -> None:
    """Recall@k and MAP@R of test queries against the index, beside the raw-pixel baseline."""
    from simrec.evaluation.evaluate import evaluate as evaluate_run
    from simrec.lake.tables import Lakehouse

    settings = _settings(config, set_)
    run_id = _run_id(settings, run_id, require_index=True)
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

    settings = _settings(config, set_)
    run_id = _run_id(settings, run_id, require_index=True)
    try:
        results = recommend_for_image(settings, run_id, image, k)
    except (InvalidImageError, ValueError) as error:
        _fail(error)
    typer.echo(f"{'rank':>4}  {'item id':<20} {'label':<14} distance")
    for result in results:
        typer.echo(
            f"{result.rank:>4}  {result.item_id:<20} {result.label_name:<14} {result.distance:.4f}"
        )


def _csv(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


StyleRunOption = Annotated[
    str | None, typer.Option("--run-id", help="Style run (default: the newest with a bundle).")
]
ItemsVersionOption = Annotated[
    int | None, typer.Option(help="catalog_items Delta version (default latest).")
]
RoomsVersionOption = Annotated[
    int | None, typer.Option(help="catalog_item_rooms Delta version (default latest).")
]


@style_app.command("build")
def style_build(
    items_version: ItemsVersionOption = None,
    item_rooms_version: RoomsVersionOption = None,
    evaluate: Annotated[bool, typer.Option(help="Evaluate HR@n right after.")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """The featurizer chosen on held-out rooms (style.featurizer; Gram vectors for a catalog too
    small to choose on) → one faiss index per category; prints the held-out figures."""
    from simrec.lake.tables import Lakehouse, TableMissingError
    from simrec.style.build import build_style
    from simrec.style.evaluate import evaluate_style_run
    from simrec.style.select import table

    settings = _settings(config, set_)
    lake = Lakehouse(settings.lake.root)
    try:
        result = build_style(settings, lake, items_version, item_rooms_version)
    except (TableMissingError, ValueError, FileNotFoundError) as error:
        _fail(error)
    meta = result.bundle.meta
    typer.echo(
        f"run {result.run_id}: style bundle of {len(result.bundle.items)} items, "
        f"featurizer {meta['featurizer']} ({meta['featurizer_choice']})"
    )
    if result.selection is not None:  # in-sample figures of a selected bundle would flatter it
        typer.echo("held out (nested cross-fit), HR@n model/colour/random:")
        typer.echo(table(result.selection.heldout["selected"], settings.style.hit_at))
    elif evaluate:
        typer.echo(evaluate_style_run(settings, lake, result.run_id).table())


@style_app.command("train")
def style_train(
    items_version: ItemsVersionOption = None,
    item_rooms_version: RoomsVersionOption = None,
    cross_fit: Annotated[
        bool, typer.Option(help="Also train one head per fold: every query scored held-out.")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Learn style from rooms (items sharing a room are positives); held-out items evaluated."""
    from simrec.lake.tables import Lakehouse, TableMissingError
    from simrec.style.train import train_style

    settings = _settings(config, set_)
    try:
        result = train_style(
            settings, Lakehouse(settings.lake.root), items_version, item_rooms_version, cross_fit
        )
    except (TableMissingError, ValueError, FileNotFoundError) as error:
        _fail(error)
    for evaluation in (result.heldout, result.heldout_gram, result.crossfit):
        if evaluation is not None:
            typer.echo(evaluation.table())
    typer.echo(f"run {result.run_id}: learned style bundle ({result.seconds:.0f} s)")


@style_app.command("select")
def style_select(
    items_version: ItemsVersionOption = None,
    item_rooms_version: RoomsVersionOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Choose the featurizer on held-out rooms (nested cross-fit); bundle the winner."""
    from simrec.lake.tables import Lakehouse, TableMissingError
    from simrec.style.select import select_style

    settings = _settings(config, set_)
    try:
        result = select_style(
            settings, Lakehouse(settings.lake.root), items_version, item_rooms_version
        )
    except (TableMissingError, ValueError, FileNotFoundError) as error:
        _fail(error)
    typer.echo(f"run {result.run_id}: {result.protocol.winner.name} ({result.seconds:.0f} s)")


@style_app.command("evaluate")
def style_evaluate(
    pairs: Annotated[
        str | None, typer.Option(help="source:target pairs, e.g. chair:table,bed:pillow.")
    ] = None,
    run_id: StyleRunOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """HR@n per pair against room scenes, beside random ranking and a colour histogram."""
    from simrec.lake.tables import Lakehouse
    from simrec.style.evaluate import evaluate_style_run
    from simrec.style.runs import latest_style_run_id
    from simrec.tracking import setup_mlflow

    settings = _settings(config, set_)
    setup_mlflow(settings.mlflow)
    try:
        run_id = run_id or latest_style_run_id(settings.mlflow.experiment)
        evaluation = evaluate_style_run(
            settings, Lakehouse(settings.lake.root), run_id, _csv(pairs)
        )
    except (LookupError, ValueError) as error:
        _fail(error)
    typer.echo(evaluation.table())


@style_app.command("recommend")
def style_recommend(
    image: Annotated[
        Path, typer.Option("--image", help="Query image file.", exists=True, dir_okay=False)
    ],
    to: Annotated[
        str | None, typer.Option("--to", help="Target categories, e.g. table,sofa (default all).")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="Items per category.")] = 10,
    category: Annotated[
        str | None, typer.Option(help="The query's own category (default: inferred).")
    ] = None,
    include_own: Annotated[
        bool, typer.Option(help="Also recommend from the query's own category.")
    ] = False,
    run_id: StyleRunOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """The n items of each category that best match an image's style."""
    from simrec.images import InvalidImageError
    from simrec.style.recommend import recommend_for_payload
    from simrec.style.runs import latest_style_run_id, load_run_bundle
    from simrec.tracking import setup_mlflow

    settings = _settings(config, set_)
    setup_mlflow(settings.mlflow)
    try:
        if not 0 < n <= settings.style.max_n:
            raise ValueError(f"-n must be between 1 and {settings.style.max_n}, got {n}")
        bundle = load_run_bundle(run_id or latest_style_run_id(settings.mlflow.experiment))
        results = recommend_for_payload(
            bundle, image.read_bytes(), n, _csv(to), category, include_own, str(image)
        )
    except (LookupError, InvalidImageError, ValueError) as error:
        _fail(error)
    typer.echo(f"{'category':<10} {'rank':>4}  {'item id':<14} {'name':<24} distance")
    for result in results:
        typer.echo(
            f"{result.category:<10} {result.rank:>4}  {result.item_id:<14} "
            f"{(result.name or '-')[:24]:<24} {result.distance:.4f}"
        )


@style_app.command("fetch-weights")
def style_fetch_weights(
    destination: Annotated[
        Path | None, typer.Option(help="Where to keep it (default: style.squeezenet.path).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Download the SqueezeNet v1.1 ImageNet weights once and verify their sha256."""
    from simrec.style.squeezenet import WeightsChecksumError, download_weights

    weights = _settings(config, set_).style.squeezenet
    target = destination or weights.path
    try:
        path = download_weights(weights.url, weights.sha256, target, weights.download_timeout_s)
    except (OSError, WeightsChecksumError) as error:
        _fail(error)
    typer.echo(f"SqueezeNet v1.1 ImageNet weights verified at {path}")


@style_app.command("register")
def style_register(
    run_id: StyleRunOption = None,
    promote: PromoteOption = True,
    force: ForceOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Register a run's style bundle (promotion.style_registered_model) as challenger; promote
    it to champion if it beats the colour histogram and the re-scored champion on HR@n."""
    from simrec.lake.tables import Lakehouse
    from simrec.serving.style_promotion import register_style
    from simrec.style.runs import bundle_folder, latest_style_run_id
    from simrec.tracking import setup_mlflow

    settings = _settings(config, set_)
    setup_mlflow(settings.mlflow)
    try:
        run_id = run_id or latest_style_run_id(settings.mlflow.experiment)
    except LookupError as error:
        _fail(error)
    uri, promotion = register_style(
        settings, Lakehouse(settings.lake.root), run_id, bundle_folder(run_id), promote, force
    )
    typer.echo(f"registered {settings.promotion.style_registered_model} from run {run_id}: {uri}")
    _report_promotion(promotion)


def _report_promotion(promotion) -> None:
    """Print the gate's figures and decision; exit 1 when it refused."""
    if promotion is None:
        return
    refused = not promotion.promoted
    typer.secho(promotion.summary(), fg=typer.colors.RED if refused else None, err=refused)
    if refused:
        raise typer.Exit(code=1)


@app.command()
def promote(
    model: Annotated[
        str | None,
        typer.Option("--model", help="Registered model name (default serving.registered_model)."),
    ] = None,
    version: Annotated[
        int | None, typer.Option(help="Version to gate (default: the challenger alias).")
    ] = None,
    reindexed: Annotated[
        bool,
        typer.Option("--reindex", help="Re-index gate: no regression only (no baseline check)."),
    ] = False,
    force: ForceOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Gate a registered version against raw-pixel kNN and the re-scored champion, on the same
    fixed query set; point the served alias at it only if it passes (or --force)."""
    from simrec.lake.tables import Lakehouse
    from simrec.serving.promotion import promote as run_gate
    from simrec.serving.style_promotion import promote_style
    from simrec.tracking import setup_mlflow

    settings = _settings(config, set_)
    setup_mlflow(settings.mlflow)
    try:
        if model == settings.promotion.style_registered_model:
            result = promote_style(settings, Lakehouse(settings.lake.root), version, force)
        else:
            result = run_gate(
                settings, model, version, kind="reindex" if reindexed else "model", force=force
            )
    except (LookupError, ValueError) as error:
        _fail(error)
    _report_promotion(result)


@app.command()
def package(
    run_id: RunOption = None,
    register: Annotated[
        str | None, typer.Option(help="Registered model name (default serving.registered_model).")
    ] = None,
    alias: Annotated[
        str | None, typer.Option(help="Alias for the new version (default serving.alias).")
    ] = None,
    table: Annotated[
        str | None,
        typer.Option(
            help="Embed this table's catalog rows with the run's weights (e.g. catalog_items) "
            "instead of using the run's own index."
        ),
    ] = None,
    promote: PromoteOption = True,
    force: ForceOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Bundle a run's model, catalog index, metadata and thumbnails as one pyfunc; register it
    as challenger, evaluate it through its own predict path, and promote it if the gate passes."""
    from simrec.index.faiss_index import IndexMismatchError
    from simrec.lake.tables import Lakehouse, TableMissingError
    from simrec.serving.package import package_run

    settings = _settings(config, set_)
    run_id = _run_id(settings, run_id)
    try:
        result = package_run(
            settings, Lakehouse(settings.lake.root), run_id, register, alias, table, promote, force
        )
    except (LookupError, TableMissingError, IndexMismatchError, ValueError) as error:
        _fail(error)
    typer.echo(
        f"{result.registered_name} version {result.version} ({result.lineage['index_size']} "
        f"items, from run {run_id}): {result.registry_uri}"
    )
    _report_promotion(result.promotion)


@app.command()
def reindex(
    model: ModelOption = None,
    alias: Annotated[
        str | None,
        typer.Option(help="Alias to point at the new version (default reindex.alias; '' none)."),
    ] = None,
    full: Annotated[
        bool,
        typer.Option("--full", help="Re-embed every catalog row instead of reading the changes."),
    ] = False,
    promote: PromoteOption = True,
    force: ForceOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Bring a registered model up to date with its Delta table, without retraining: embed
    the rows inserted since its recorded version, drop the deleted ones, register the result
    as challenger; the alias moves only if it does not regress on the fixed query set."""
    from simrec.index.faiss_index import IndexMismatchError
    from simrec.index.reindex import reindex as reindex_model
    from simrec.lake.tables import ChangeFeedError

    settings = _settings(config, set_)
    try:
        result = reindex_model(
            settings, _model_uri(settings, model), alias, full, promote=promote, force=force
        )
    except (LookupError, ValueError, ChangeFeedError, IndexMismatchError) as error:
        _fail(error)
    typer.echo(result.summary())
    if result.package is not None:
        _report_promotion(result.package.promotion)


@app.command("batch-recommend")
def batch_recommend(
    model: ModelOption = None,
    table: Annotated[
        str | None, typer.Option(help="Table to recommend for (default: the model's own).")
    ] = None,
    table_version: Annotated[
        int | None,
        typer.Option(help="Its Delta version (default: the model's, else the latest)."),
    ] = None,
    output_table: Annotated[
        str | None, typer.Option(help="Delta table to write (default batch.output_table).")
    ] = None,
    k: Annotated[int | None, typer.Option("-k", help="Recommendations per item.")] = None,
    all_rows: Annotated[
        bool, typer.Option("--all-rows", help="Every row, not only the model's catalog rows.")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """The k most similar items of every row of a table, on Spark, into a Delta table."""
    from simrec.batch.recommend import batch_recommend as recommend_table
    from simrec.spark import get_spark

    settings = _settings(config, set_)
    if all_rows:
        settings = settings.with_overrides({"batch.rows": "all"})
    try:
        result = recommend_table(
            settings,
            get_spark(settings.spark),
            _model_uri(settings, model),
            table,
            table_version,
            output_table,
            k,
        )
    except (LookupError, ValueError) as error:
        _fail(error)
    typer.echo(result.summary())


@app.command()
def serve(
    model_uri: Annotated[
        str | None,
        typer.Option(help="Model to serve (default models:/<serving.registered_model>@<alias>)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default serving.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serving.port).")] = None,
    token_file: TokenFileOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Serve the packaged model over HTTP, bearer token required on /invocations."""
    from simrec.serving.limits import RequestLimits
    from simrec.serving.server import serve as run_server
    from simrec.serving.tokens import TokenError, load_token
    from simrec.tracking import setup_mlflow

    settings = _settings(config, set_)
    serving = settings.serving
    try:
        token = load_token(token_file, serving.token_env, serving.min_token_chars)
    except TokenError as error:
        _fail(error)
    setup_mlflow(settings.mlflow)
    run_server(
        _model_uri(settings, model_uri),
        token,
        host or serving.host,
        port or serving.port,
        serving.max_body_bytes,
        limits=RequestLimits.from_settings(serving),
        max_drain_bytes=serving.max_drain_bytes,
        shutdown_seconds=serving.shutdown_seconds,
        serving=serving,
    )


@app.command()
def query(
    image: Annotated[
        Path | None,
        typer.Argument(help="Query image file (or --item-id).", exists=True, dir_okay=False),
    ] = None,
    item_id: Annotated[
        str | None,
        typer.Option("--item-id", help="Query by this catalog item instead of an image."),
    ] = None,
    url: Annotated[str | None, typer.Option(help="Server URL (default serving.host/port).")] = None,
    token_file: TokenFileOption = None,
    k: Annotated[int, typer.Option("-k", help="How many similar items.")] = 5,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Ask a running `simrec serve` for the items most similar to IMAGE, or to the catalog
    item --item-id (never that item itself)."""
    from simrec.serving.client import SimrecClient, SimrecClientError
    from simrec.serving.tokens import TokenError, load_token

    if (image is None) == (item_id is None):
        raise typer.BadParameter("give a query IMAGE or --item-id, not both or neither")
    settings = _settings(config, set_)
    serving = settings.serving
    try:
        token = load_token(token_file, serving.token_env, min_chars=1)
        with SimrecClient(
            url or f"http://{serving.host}:{serving.port}", token, serving.client_timeout_s
        ) as client:
            if item_id is not None:
                items = client.similar_to_item(item_id, k=k, thumbnails=False)
            else:
                items = client.similar(image, k=k, thumbnails=False)
    except (TokenError, SimrecClientError) as error:
        _fail(error)
    typer.echo(f"{'rank':>4}  {'item id':<20} {'label':<14} distance")
    for item in items:
        typer.echo(f"{item.rank:>4}  {item.item_id:<20} {item.label!s:<14} {item.distance:.4f}")


@app.command("app")
def run_app(
    address: Annotated[str | None, typer.Option(help="Bind address (default app.address).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default app.port).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """The Streamlit demo: fashion look-alikes and furniture "complete the look"."""
    from simrec.app.launch import streamlit_command, streamlit_env

    settings = _settings(config, set_)
    command = streamlit_command(
        address or settings.app.address, port or settings.app.port, config, set_ or [], settings.app
    )
    # exec: signals (Ctrl-C, the container's SIGTERM) reach streamlit itself.
    os.execve(command[0], command, streamlit_env())


@app.command()
def pipeline(
    skip_catalog: Annotated[bool, typer.Option(help="Skip the IKEA catalog ingest.")] = False,
    promote: PromoteOption = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """The main job: ingest, train, package + evaluate the bundle, gate and promote."""
    from simrec.background import BackgroundStepError
    from simrec.lake.catalog import CatalogSourceError
    from simrec.lake.ikea_download import CatalogDownloadError
    from simrec.pipeline import run_pipeline

    settings = _settings(config, set_)
    try:
        result = run_pipeline(settings, with_catalog=not skip_catalog, promote=promote)
    except (CatalogSourceError, CatalogDownloadError, BackgroundStepError) as error:
        _fail(error)
    typer.echo(result.summary(str(settings.lake.root), settings.mlflow.experiment))
    refused = [
        gate
        for gate in (result.package.promotion, result.style_promotion)
        if gate is not None and not gate.promoted
    ]
    if refused:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
