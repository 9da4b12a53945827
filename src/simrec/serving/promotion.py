"""The promotion gate: a new registered version carries the `challenger` alias; the served
alias (`champion`) moves to it only when it is measurably good enough.

A packaged model must beat the raw-pixel kNN baseline by `promotion.min_margin_over_baseline`
and lose at most `promotion.max_regression` against the current champion, the champion being
re-scored now on the same fixed query set (never read from old tags). The first version, with
no champion yet, passes on the baseline alone. A re-indexed version keeps its weights, so its
gate is "no regression against the champion" only. `force` promotes whatever the figures say
(and records that it did)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import mlflow

from simrec.config import PromotionSettings, Settings
from simrec.evaluation.bundle import BundleScore, load_search_model, score_bundle
from simrec.evaluation.evaluate import score_with_baseline
from simrec.evaluation.queries import NoQuerySetError
from simrec.serving.bundle import BundleNotFoundError, registered_lineage, resolve_version

log = logging.getLogger(__name__)

GateKind = Literal["model", "reindex"]
PROMOTION_TAG = "simrec.promotion"


class PromotionRefusedError(RuntimeError):
    """The gate refused the challenger (the CLI exits non-zero with this message)."""


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    challenger: float | None
    baseline: float | None  # raw-pixel kNN on the same queries; None for a re-index gate
    champion: float | None  # the current champion re-scored; None when there is none
    champion_version: int | None
    reasons: list[str] = field(default_factory=list)  # why it failed (empty when passed)
    baseline_name: str = "raw-pixel kNN"

    def describe(self) -> str:
        def shown(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        champion = (
            f"champion v{self.champion_version} {shown(self.champion)}"
            if self.champion_version is not None
            else "no champion yet"
        )
        figures = (
            f"{self.metric}: challenger {shown(self.challenger)}, {self.baseline_name} "
            f"{shown(self.baseline)}, {champion}"
        )
        if self.passed:
            return f"gate passed ({figures})"
        return f"gate refused ({figures}): " + "; ".join(self.reasons)


def decide(
    metric: str,
    challenger: float,
    baseline: float | None,
    champion: float | None,
    champion_version: int | None,
    rules: PromotionSettings,
    baseline_name: str = "raw-pixel kNN",
) -> GateDecision:
    """The gate as a pure function of the figures (`baseline` None: no baseline check)."""
    reasons = []
    if baseline is not None:
        needed = baseline + rules.min_margin_over_baseline
        if challenger < needed:
            reasons.append(
                f"{challenger:.4f} does not beat {baseline_name} {baseline:.4f} by the required "
                f"margin {rules.min_margin_over_baseline:+.4f} (needs ≥ {needed:.4f})"
            )
    if champion is not None:
        floor = champion - rules.max_regression
        if challenger < floor:
            reasons.append(
                f"{challenger:.4f} is worse than champion v{champion_version}'s {champion:.4f} "
                f"beyond the tolerance {rules.max_regression:.4f} (needs ≥ {floor:.4f})"
            )
    return GateDecision(
        not reasons,
        metric,
        challenger,
        baseline,
        champion,
        champion_version,
        reasons,
        baseline_name,
    )


@dataclass(frozen=True)
class PromotionResult:
    name: str
    version: int
    alias: str
    decision: GateDecision
    promoted: bool  # the alias now points at `version`
    forced: bool

    def summary(self) -> str:
        outcome = (
            f"{self.alias} → version {self.version}" + (" (forced)" if self.forced else "")
            if self.promoted
            else f"{self.alias} unchanged; version {self.version} stays challenger"
        )
        return f"{self.name}: {self.decision.describe()}; {outcome}"


def _champion(name: str, alias: str, challenger_version: int) -> int | None:
    try:
        version = resolve_version(f"models:/{name}@{alias}").version
    except BundleNotFoundError:
        return None
    return None if version == challenger_version else version


def _refused_unmeasurable(rules: PromotionSettings, error: Exception) -> GateDecision:
    return GateDecision(False, rules.metric, None, None, None, None, [f"cannot measure: {error}"])


def gate(
    settings: Settings,
    name: str,
    version: int,
    alias: str,
    kind: GateKind,
    challenger_score: BundleScore | None = None,
) -> GateDecision:
    """Score (or take `challenger_score`), re-score the champion on the same queries, decide."""
    rules = settings.promotion
    uri = f"models:/{name}/{version}"
    try:
        if challenger_score is None:
            lineage = registered_lineage(uri)
            challenger_score = score_with_baseline(settings, load_search_model(uri), lineage)
    except (NoQuerySetError, KeyError, ValueError) as error:
        return _refused_unmeasurable(rules, error)
    champion_version = _champion(name, alias, version)
    champion_figure = None
    if champion_version is not None:
        champion_model = load_search_model(f"models:/{name}/{champion_version}")
        try:
            champion_score = score_bundle(
                champion_model,
                challenger_score.queries,
                settings.evaluation,
                settings.train.holdout_classes,
            )
        except (KeyError, ValueError) as error:
            log.warning(
                "champion v%s cannot be scored on these queries: %s", champion_version, error
            )
        else:
            champion_figure = champion_score.metrics[rules.metric]
    if rules.metric not in challenger_score.metrics:
        raise ValueError(
            f"promotion.metric {rules.metric!r} is not an evaluation figure; "
            f"choose from {sorted(challenger_score.metrics)}"
        )
    baseline = challenger_score.baseline.get(rules.metric) if kind == "model" else None
    if kind == "model" and baseline is None:
        raise ValueError("the model gate needs the raw-pixel baseline (evaluation.baseline)")
    return decide(
        rules.metric,
        challenger_score.metrics[rules.metric],
        baseline,
        champion_figure,
        champion_version,
        rules,
    )


def promote(
    settings: Settings,
    name: str | None = None,
    version: int | None = None,
    alias: str | None = None,
    kind: GateKind = "model",
    force: bool = False,
    challenger_score: BundleScore | None = None,
) -> PromotionResult:
    """Run the gate on `version` (default: the `challenger` alias) of `name` (default
    `serving.registered_model`) and point `alias` (default `serving.alias`) at it if it passes
    or `force`. The decision is recorded as tags on the version either way."""
    name = name or settings.serving.registered_model
    alias = alias or settings.serving.alias
    if version is None:
        version = resolve_version(f"models:/{name}@{settings.promotion.challenger_alias}").version
    decision = gate(settings, name, version, alias, kind, challenger_score)
    return record_decision(name, version, alias, decision, force)


def record_decision(
    name: str, version: int, alias: str, decision: GateDecision, force: bool
) -> PromotionResult:
    """Tag `version` with the decision and move `alias` to it when it passed (or `force`)."""
    promoted = decision.passed or force
    client = mlflow.MlflowClient()
    outcome = "promoted" if decision.passed else ("forced" if force else "refused")
    client.set_model_version_tag(name, str(version), PROMOTION_TAG, outcome)
    client.set_model_version_tag(name, str(version), f"{PROMOTION_TAG}.gate", decision.describe())
    if promoted:
        client.set_registered_model_alias(name, alias, str(version))
    result = PromotionResult(
        name, version, alias, decision, promoted, force and not decision.passed
    )
    log.info("%s", result.summary())
    return result
