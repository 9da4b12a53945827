"""Learning style from rooms: a metric-learning head on frozen style vectors, where items that
appear in the same room scene are positives: a multi-similarity loss over cross-category pairs
(default), or TensorFlow Similarity's MultiSimilarityLoss over every pair, the fashion model's.

The backbone and PCAs stay frozen (fine-tuning VGG16 is not feasible on a few CPU cores); the
head learns which directions of the style space "go together". Items are split by a hash of
their id (`catalog.item_folds`); a held-out item never reaches training: not as an example, not
as a room member. Augmentation happens on images (random flips and crops, each view through the
backbone and PCAs) and on features (Gaussian noise, dropout).

With `cross_fit`, one head is trained per fold, so every item is scored once by a model that
never saw it; the deployed bundle is always the `holdout_fold` model.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow_similarity.layers import MetricEmbedding
from tensorflow_similarity.losses import MultiSimilarityLoss

from simrec.config import Settings, StyleTrainSettings
from simrec.lake.tables import Lakehouse
from simrec.style.build import (
    bundle_meta,
    log_bundle,
)
from simrec.style.bundle import StyleBundle, StyleEncoder
from simrec.style.catalog import (
    StyleCatalog,
    holdout_mask,
    item_folds,
    read_style_catalog,
    split_rule,
)
from simrec.style.colour import colour_histograms
from simrec.style.evaluate import (
    StyleEvaluation,
    colour_pair_hits,
    evaluate_vectors,
    log_evaluation,
    pair_queries,
    report_pair,
    vectors_for,
)
from simrec.style.features import StyleFeaturizer
from simrec.style.hit_ratio import merge_hits, pair_hits
from simrec.style.indexes import CategoryIndexes
from simrec.tracking import setup_mlflow, tracked_step

log = logging.getLogger(__name__)


@dataclass
class StyleTrainResult:
    run_id: str | None
    folder: Path
    bundle: StyleBundle
    heldout: StyleEvaluation  # learned head, held-out queries of the deployed split
    heldout_gram: StyleEvaluation  # untrained Gram vectors, the same queries
    crossfit: StyleEvaluation | None = None  # every eligible query, each by a head blind to it
    seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)


# ---------------------------------------------------------------- augmentation


def augmented_views(pixels: np.ndarray, views: int, min_crop: float, seed: int) -> list[np.ndarray]:
    """`views` copies of each image, each randomly mirrored and cropped (side in
    [min_crop, 1] of the image, anywhere inside it) and resized back. Colours are left alone:
    they are part of style."""
    rng = np.random.default_rng(seed)
    size = pixels.shape[1]
    out = []
    for _ in range(views):
        batch = np.empty_like(pixels)
        for row, image in enumerate(pixels):
            side = int(round(size * rng.uniform(min_crop, 1.0)))
            top, left = rng.integers(0, size - side + 1, size=2)
            crop = Image.fromarray(image[top : top + side, left : left + side])
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            batch[row] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
        out.append(batch)
    return out


# ---------------------------------------------------------------- room batches


def room_members(
    item_ids: np.ndarray, rooms: dict[str, frozenset[str]], train_mask: np.ndarray, minimum: int
) -> list[np.ndarray]:
    """Per room (sorted by id), the positions of its *training* items; rooms with fewer than
    `minimum` training items are dropped (they give no positive pair)."""
    members: dict[str, list[int]] = {}
    for position in np.flatnonzero(train_mask):
        for room in rooms.get(str(item_ids[position]), ()):
            members.setdefault(room, []).append(int(position))
    return [
        np.asarray(members[room], dtype=np.int64)
        for room in sorted(members)
        if len(members[room]) >= minimum
    ]


class RoomBatches(tf.keras.utils.Sequence):
    """Batches of `rooms_per_batch` rooms × up to `items_per_room` of their training items,
    labelled by room. An item appears at most once per batch (an item in two sampled rooms
    would otherwise be its own negative); each appearance uses a random augmented view."""

    def __init__(
        self,
        views: np.ndarray,  # (V, N, D) style vectors of every item, view 0 = the original
        members: list[np.ndarray],
        rooms_per_batch: int,
        items_per_room: int,
        steps: int,
        seed: int,
        categories: np.ndarray | None = None,  # (N,) integer codes: labels become (room, code)
    ):
        super().__init__()
        if not members:
            raise ValueError("no room has enough training items to form a positive pair")
        self.views = views
        self.members = members
        self.rooms_per_batch = min(rooms_per_batch, len(members))
        self.items_per_room = items_per_room
        self.steps = steps
        self.categories = categories
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        used: set[int] = set()
        positions, labels = [], []
        for room in self.rng.permutation(len(self.members))[: self.rooms_per_batch]:
            candidates = [p for p in self.rng.permutation(self.members[room]) if p not in used]
            chosen = candidates[: self.items_per_room]
            if len(chosen) < 2:
                continue
            used.update(chosen)
            positions.extend(chosen)
            labels.extend([room] * len(chosen))
        view = self.rng.integers(0, len(self.views), size=len(positions))
        rooms = np.asarray(labels, dtype=np.int64)
        if self.categories is not None:
            return self.views[view, positions], np.stack([rooms, self.categories[positions]], 1)
        return self.views[view, positions], rooms


# ---------------------------------------------------------------- the head


def cross_category_loss(alpha: float, beta: float, lmda: float):
    """Multi-similarity loss (Wang et al. 2019, without pair mining) over cross-category pairs.

    Labels are (room, category) per row. Positives: same room, other category; negatives:
    other room, other category. Pairs of the same category are ignored: two white chairs from
    different rooms are not "unlike" each other, and pushing them apart (as a room-labelled
    loss over every pair does) wrecks the style similarity the head starts from.
    """

    def loss(labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        labels = tf.cast(labels, tf.int64)
        room, category = labels[:, 0], labels[:, 1]
        similarity = tf.matmul(embeddings, embeddings, transpose_b=True)
        same_room = tf.equal(room[:, None], room[None, :])
        other_category = tf.not_equal(category[:, None], category[None, :])
        positive = tf.cast(same_room & other_category, similarity.dtype)
        negative = tf.cast(~same_room & other_category, similarity.dtype)
        pull = tf.math.log1p(tf.reduce_sum(positive * tf.exp(-alpha * (similarity - lmda)), axis=1))
        push = tf.math.log1p(tf.reduce_sum(negative * tf.exp(beta * (similarity - lmda)), axis=1))
        anchors = tf.cast(tf.reduce_sum(positive, axis=1) > 0, similarity.dtype)
        per_anchor = anchors * (pull / alpha + push / beta)
        return tf.reduce_sum(per_anchor) / tf.maximum(tf.reduce_sum(anchors), 1.0)

    return loss


def build_head(input_dim: int, settings: StyleTrainSettings, mean: np.ndarray, var: np.ndarray):
    layers = tf.keras.layers
    inputs = layers.Input(shape=(input_dim,), name="style_vector")
    features = layers.Normalization(mean=mean, variance=var, name="standardise")(inputs)
    if settings.input_noise:
        features = layers.GaussianNoise(settings.input_noise, name="noise")(features)
    if settings.hidden_units:
        features = layers.Dense(settings.hidden_units, activation="relu", name="hidden")(features)
    if settings.dropout:
        features = layers.Dropout(settings.dropout, name="dropout")(features)
    outputs = MetricEmbedding(settings.embedding_dim, name="style_embedding")(features)
    return tf.keras.Model(inputs, outputs, name="style_head")


def train_head(
    views: np.ndarray,
    item_ids: np.ndarray,
    rooms: dict[str, frozenset[str]],
    train_mask: np.ndarray,
    settings: StyleTrainSettings,
    seed: int,
    categories: np.ndarray | None = None,
) -> tuple[tf.keras.Model, dict[str, list[float]]]:
    """Fit a head on the training items only (their rooms, their views)."""
    tf.keras.utils.set_random_seed(seed)
    members = room_members(item_ids, rooms, train_mask, settings.min_room_items)
    train_vectors = views[:, train_mask].reshape(-1, views.shape[-1])
    head = build_head(
        views.shape[-1], settings, train_vectors.mean(axis=0), train_vectors.var(axis=0) + 1e-6
    )
    steps = settings.epochs * settings.steps_per_epoch
    schedule = tf.keras.optimizers.schedules.CosineDecay(settings.learning_rate, max(steps, 1))
    codes = None
    if settings.loss == "cross_category":
        if categories is None:
            raise ValueError("the cross_category loss needs the items' categories")
        codes = np.unique(np.asarray(categories, dtype=str), return_inverse=True)[1]
        loss = cross_category_loss(settings.loss_alpha, settings.loss_beta, settings.loss_lmda)
    else:
        loss = MultiSimilarityLoss(
            distance="cosine",
            alpha=settings.loss_alpha,
            beta=settings.loss_beta,
            epsilon=settings.loss_epsilon,
            lmda=settings.loss_lmda,
        )
    head.compile(optimizer=tf.keras.optimizers.Adam(schedule), loss=loss)
    batches = RoomBatches(
        views,
        members,
        settings.rooms_per_batch,
        settings.items_per_room,
        settings.steps_per_epoch,
        seed,
        codes,
    )
    history = head.fit(batches, epochs=settings.epochs, verbose=0, shuffle=False)
    return head, {k: [float(v) for v in values] for k, values in history.history.items()}


def embed(head: tf.keras.Model, style_vectors: np.ndarray) -> np.ndarray:
    return np.asarray(head.predict(style_vectors, batch_size=512, verbose=0), dtype=np.float32)


# ---------------------------------------------------------------- the step


def style_views(
    featurizer: StyleFeaturizer,
    pixels: np.ndarray,
    needed: np.ndarray,
    settings: StyleTrainSettings,
    seed: int,
    originals: np.ndarray | None = None,
) -> np.ndarray:
    """(1 + augment_views, N, D): originals (fitting the PCAs unless `originals` come from a
    fitted featurizer), then augmented views of the `needed` items (other rows repeat the
    original: they are never sampled for training)."""
    if originals is None:
        originals = featurizer.fit_transform(pixels)
    views = [originals]
    if settings.augment_views and needed.any():
        for view in augmented_views(
            pixels[needed], settings.augment_views, settings.augment_crop, seed
        ):
            vectors = originals.copy()
            vectors[needed] = featurizer.transform(view)
            views.append(vectors)
    return np.stack(views)


def crossfit_evaluation(
    settings: Settings,
    catalog: StyleCatalog,
    views: np.ndarray,
    histograms: np.ndarray,
) -> StyleEvaluation:
    """Every eligible query scored by the head of the fold that held it out."""
    train = settings.style.train
    folds = item_folds(catalog.ids, train.folds)
    hits: dict[str, list] = {pair: [] for pair in settings.style.pairs}
    colour: dict[str, list] = {pair: [] for pair in settings.style.pairs}
    for fold in range(train.folds):
        held = folds == fold
        head, _ = train_head(
            views, catalog.ids, catalog.rooms, ~held, train, train.seed + fold, catalog.categories
        )
        vectors = embed(head, views[0])
        for pair in settings.style.pairs:
            query_ids, pool_ids = pair_queries(catalog, pair, held)
            hits[pair].append(
                pair_hits(
                    pair,
                    query_ids,
                    vectors_for(query_ids, catalog.ids, vectors),
                    pool_ids,
                    vectors_for(pool_ids, catalog.ids, vectors),
                    catalog.rooms,
                    settings.style.hit_at,
                    "cosine",
                )
            )
            colour[pair].append(
                colour_pair_hits(
                    catalog, histograms, pair, query_ids, pool_ids, settings.style.hit_at
                )
            )
        log.info(f"cross-fit: fold {fold + 1}/{train.folds} done")
    evaluation = StyleEvaluation(
        f"learned, cross-fitted over {train.folds} folds (every query held out)"
    )
    for pair in settings.style.pairs:
        evaluation.pairs.append(
            report_pair(
                merge_hits(hits[pair]), merge_hits(colour[pair]), settings.style.min_queries
            )
        )
    return evaluation


def train_style(
    settings: Settings,
    lake: Lakehouse,
    items_version: int | None = None,
    item_rooms_version: int | None = None,
    cross_fit: bool = False,
    output_dir: Path | None = None,
    track: bool = True,
    base: StyleBundle | None = None,
) -> StyleTrainResult:
    """Train the head on the training items, evaluate it on the held-out ones; `base`, a Gram
    bundle of the same catalog, saves recomputing the featurizer and the original vectors."""
    started = time.perf_counter()
    style, train = settings.style, settings.style.train
    catalog = read_style_catalog(
        lake, settings.lake, items_version, item_rooms_version, style.categories or None
    )
    held = holdout_mask(catalog.ids, train.folds, train.holdout_fold)
    rule = split_rule(train.folds, train.holdout_fold)
    log.info(f"item split: {int((~held).sum())} training, {int(held.sum())} held out ({rule})")
    originals = None
    if base is not None:
        if list(base.items["id"]) != list(catalog.ids):
            raise ValueError("the base bundle was built from other catalog items")
        featurizer, originals = base.encoder.featurizer, base.vectors
    else:
        featurizer = StyleFeaturizer(style)
    pixels = catalog.pixels(featurizer.image_size)
    # The PCAs are fitted on every catalog image (unsupervised, no room data); only the head
    # learns from rooms, and it never sees a held-out item.
    needed = np.ones(len(catalog), bool) if cross_fit else ~held
    views = style_views(featurizer, pixels, needed, train, style.seed, originals)
    head, history = train_head(
        views, catalog.ids, catalog.rooms, ~held, train, train.seed, catalog.categories
    )
    vectors = embed(head, views[0])
    histograms = colour_histograms(pixels, style.colour_bins)

    def heldout(item_vectors: np.ndarray, metric: str, label: str) -> StyleEvaluation:
        return evaluate_vectors(
            catalog,
            item_vectors,
            style.pairs,
            style.hit_at,
            metric,
            histograms,
            style.min_queries,
            label,
            held,
        )

    learned_eval = heldout(vectors, "cosine", f"learned (held-out queries: {rule})")
    gram_eval = heldout(views[0], style.metric, "gram, untrained (same held-out queries)")
    crossfit = crossfit_evaluation(settings, catalog, views, histograms) if cross_fit else None

    meta = bundle_meta("learned", catalog, featurizer)
    meta["split"] = {
        "rule": rule,
        "folds": train.folds,
        "holdout_fold": train.holdout_fold,
        "train_items": int((~held).sum()),
        "heldout_items": int(held.sum()),
    }
    bundle = StyleBundle(
        encoder=StyleEncoder(featurizer, head),
        indexes=CategoryIndexes.build(catalog.ids, catalog.categories, vectors, "cosine"),
        items=catalog.items_frame(),
        vectors=vectors,
        meta=meta,
    )
    folder = bundle.save(Path(output_dir or tempfile.mkdtemp(prefix="simrec-style-train-")))
    seconds = time.perf_counter() - started
    for evaluation in (learned_eval, gram_eval, crossfit):
        if evaluation is not None:
            log.debug("%s", evaluation.table())
    run_id = None
    if track:
        setup_mlflow(settings.mlflow)
        with tracked_step("style_train", settings, run_name="style-train") as run:
            mlflow.set_tag("simrec.style.split_rule", rule)
            mlflow.log_params(
                {"style_split_rule": rule, "style_train_items": meta["split"]["train_items"]}
            )
            for step, loss in enumerate(history.get("loss", [])):
                mlflow.log_metric("style_train_loss", loss, step=step)
            log_evaluation(learned_eval, "heldout_learned")
            log_evaluation(gram_eval, "heldout_gram")
            if crossfit is not None:
                log_evaluation(crossfit, "crossfit_learned")
            mlflow.log_metric("style_train_seconds", seconds)
            log_bundle(settings, bundle, catalog, folder)
            run_id = run.info.run_id
    return StyleTrainResult(
        run_id, folder, bundle, learned_eval, gram_eval, crossfit, seconds, history
    )
