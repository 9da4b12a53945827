"""The promotion gate of the furniture style model: mean HR@n over the judged pairs (enough
queries) against the colour-histogram baseline on the same queries and pool, and against the
current champion re-scored now. A selected bundle (`style build` / `style select`) is judged by
the held-out figures of its run (every pair, each query scored by a model blind to it); a
learned bundle on its held-out items; a Gram bundle, which learned nothing from rooms, on every
eligible query. Registration puts `challenger` on the new version; `champion` moves only when
the gate passes."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import mlflow

from simrec.config import Settings
from simrec.evaluation.queries import NoQuerySetError
from simrec.lake.tables import Lakehouse
from simrec.serving.bundle import BundleNotFoundError, resolve_version
from simrec.serving.promotion import GateDecision, PromotionResult, decide, record_decision

log = logging.getLogger(__name__)


def style_figures(evaluation, hit_at: int) -> tuple[float, float]:
    """(model, colour histogram) mean HR@`hit_at` over the pairs with enough queries."""
    judged = [pair for pair in evaluation.pairs if pair.judged and hit_at in pair.model]
    judged = [pair for pair in judged if not math.isnan(pair.model[hit_at])]
    if not judged:
        raise NoQuerySetError(f"no style pair has enough queries to judge HR@{hit_at}")
    model = sum(pair.model[hit_at] for pair in judged) / len(judged)
    colour = sum(pair.colour[hit_at] for pair in judged) / len(judged)
    return model, colour


def heldout_means(figures: list[dict], hit_at: int) -> tuple[float, float]:
    """(model, colour histogram) mean held-out HR@`hit_at` over a selection run's pairs."""
    if not figures:
        raise NoQuerySetError("the selection run recorded no pair with enough queries")
    model = sum(row[f"hr_at_{hit_at}"] for row in figures) / len(figures)
    colour = sum(row[f"colour_hr_at_{hit_at}"] for row in figures) / len(figures)
    return model, colour


def version_figures(settings: Settings, lake: Lakehouse, name: str, version: int):
    """(model, colour) mean HR@`promotion.style_hit_at` of a registered version, as the module
    docstring says each kind of bundle is judged."""
    from simrec.style.build import BUNDLE_TAG
    from simrec.style.evaluate import evaluate_bundle
    from simrec.style.runs import load_run_bundle
    from simrec.style.select import KIND, heldout_figures

    hit_at = settings.promotion.style_hit_at
    run_id = mlflow.MlflowClient().get_model_version(name, str(version)).run_id
    if mlflow.get_run(run_id).data.tags.get(BUNDLE_TAG) == KIND:
        return heldout_means(heldout_figures(run_id), hit_at)
    return style_figures(evaluate_bundle(settings, lake, load_run_bundle(run_id)), hit_at)


def promote_style(
    settings: Settings, lake: Lakehouse, version: int | None = None, force: bool = False
) -> PromotionResult:
    rules = settings.promotion
    name, alias = rules.style_registered_model, settings.serving.alias
    if version is None:
        version = resolve_version(f"models:/{name}@{rules.challenger_alias}").version
    metric = f"mean_hr_at_{rules.style_hit_at}"
    style_rules = rules.model_copy(
        update={"min_margin_over_baseline": rules.style_min_margin_over_colour}
    )
    try:
        challenger, colour = version_figures(settings, lake, name, version)
    except (NoQuerySetError, ValueError, KeyError) as error:
        reasons = [f"cannot measure: {error}"]
        decision = GateDecision(False, metric, None, None, None, None, reasons, "colour histogram")
        return record_decision(name, version, alias, decision, force)
    champion_version, champion = None, None
    try:
        current = resolve_version(f"models:/{name}@{alias}").version
    except BundleNotFoundError:
        current = None
    if current is not None and current != version:
        champion_version = current
        champion, _ = version_figures(settings, lake, name, current)
    decision = decide(
        metric, challenger, colour, champion, champion_version, style_rules, "colour histogram"
    )
    return record_decision(name, version, alias, decision, force)


def register_style(
    settings: Settings,
    lake: Lakehouse,
    run_id: str,
    folder: Path,
    promote: bool = True,
    force: bool = False,
) -> tuple[str, PromotionResult | None]:
    """Log run `run_id`'s style bundle as the style pyfunc, register it as challenger and (with
    `promote`) gate it; returns the URI it is served by now and the gate's result."""
    from simrec.style.pyfunc import log_style_pyfunc

    rules = settings.promotion
    with mlflow.start_run(run_id=run_id):
        uri = log_style_pyfunc(
            folder, rules.style_registered_model, settings, alias=rules.challenger_alias
        )
    if not promote:
        return uri, None
    result = promote_style(settings, lake, force=force)
    if result.promoted:
        uri = f"models:/{rules.style_registered_model}@{result.alias}"
    return uri, result
