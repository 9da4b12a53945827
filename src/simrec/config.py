"""Typed settings: conf/simrec.yaml, overridden by SIMREC_CONFIG and `--set key.path=value`.

One `Settings` object is loaded at the edge (CLI, notebook, MLproject) and passed down.
A config may be several YAML files joined with `:` (`conf/simrec.yaml:conf/small.yaml`): each
later file is merged over the ones before it, so an overlay only names the keys it changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PACKAGE_ROOT / "conf" / "simrec.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LakeSettings(_Section):
    root: Path
    fashion_table: str
    items_table: str
    rooms_table: str
    item_rooms_table: str
    commit_retries: int = Field(ge=0)  # re-plans after losing a commit race to another writer
    commit_retry_wait_s: float = Field(ge=0)


class FashionMnistSettings(_Section):
    source_dir: Path | None
    system_dir: Path
    download_dir: Path
    base_url: str
    files: dict[str, str]
    label_names: list[str]
    max_rows_per_split: int | None


class CatalogSettings(_Section):
    source_dir: Path | None  # None: the verified download in cache_dir
    download_url: str
    cache_dir: Path | None  # None: the user's cache folder (platformdirs)
    download_timeout_s: float = Field(gt=0)
    max_image_bytes: int
    max_image_pixels: int
    image_formats: list[str] = Field(min_length=1)  # Pillow format names the decoder tries
    max_items: int | None


class SparkSettings(_Section):
    master: str
    app_name: str
    local_ip: str | None
    delta_format: bool
    conf: dict[str, str]


class MlflowSettings(_Section):
    tracking_uri: str
    artifact_root: str | None
    experiment: str
    registry_uri: str | None


class ModelSettings(_Section):
    image_size: int
    channels: int
    conv_filters: list[int]
    convs_per_block: int
    batch_norm: bool
    dropout: float
    dense_units: int
    embedding_dim: int
    augment: bool
    augment_shift: int = Field(ge=0)  # pixels each way; the train step mirrors and shifts
    mirror_average: bool  # inference embeds each image with its left-right mirror


class TrainSettings(_Section):
    epochs: int
    steps_per_epoch: int | None
    classes_per_batch: int
    examples_per_class: int
    learning_rate: float
    lr_decay: Literal["cosine", "none"]
    warmup_fraction: float = Field(ge=0.0, lt=1.0)  # share of all steps warming up (cosine)
    classifier_weight: float = Field(ge=0.0)  # auxiliary softmax loss weight; 0: MS loss alone
    jit_compile: bool  # XLA for the train step
    precision: Literal["auto", "float32", "mixed_bfloat16"]  # compute dtype while training
    distance: str
    loss_alpha: float
    loss_beta: float
    loss_epsilon: float
    loss_lmda: float
    validation_fraction: float
    validation_queries: int
    seed: int
    max_rows: int | None
    holdout_classes: list[int]


class DistributedSettings(_Section):
    """Horovod-on-Spark data-parallel training (`simrec train --distributed`)."""

    num_proc: int
    scale_learning_rate: bool
    batch_per_worker: int | None
    reader: Literal["pyarrow", "petastorm"]
    read_batch_rows: int
    shuffle_buffer_rows: int
    checkpoint_dir: Path | None
    nics: list[str] | None
    start_timeout_s: int


class IndexSettings(_Section):
    # The one section keeping defaults (the same as conf/simrec.yaml's index:): code builds
    # exact indexes of its own (the style model's per-category flat indexes) from kind and
    # metric alone. tests/test_config_single_source.py allows this section only.
    kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    metric: Literal["ip", "l2"] = "ip"
    # `auto`: exact (flat) up to this many items, `auto_large_kind` above (README: the rule).
    auto_flat_max_rows: int = Field(100_000, gt=0)
    auto_large_kind: Literal["flat", "hnsw", "ivf"] = "hnsw"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 256
    ivf_nlist: int = 256
    ivf_nprobe: int = 16

    def kind_for(self, rows: int) -> str:
        """The index kind built for `rows` items: `kind`, or the `auto` rule's choice."""
        if self.kind != "auto":
            return self.kind
        return "flat" if rows <= self.auto_flat_max_rows else self.auto_large_kind


class EvaluationSettings(_Section):
    recall_at: list[int]
    map_at_r: bool
    baseline: Literal["raw_pixels", "none"]
    grid_queries: int
    grid_k: int
    max_queries: int | None
    query_chunk: int = Field(gt=0)
    search_threads: int | None = Field(gt=0)
    map_points: int = Field(gt=1)
    map_seed: int


class PromotionSettings(_Section):
    """The gate between a new registered version (`challenger_alias`) and the served alias."""

    challenger_alias: str
    metric: str
    min_margin_over_baseline: float
    max_regression: float = Field(ge=0)
    style_registered_model: str
    style_hit_at: int = Field(gt=0)
    style_min_margin_over_colour: float


class RecommendSettings(_Section):
    k: int
    max_k: int


class StyleTrainSettings(_Section):
    """Transfer learning from rooms: a metric head on frozen style features."""

    folds: int
    holdout_fold: int
    augment_views: int
    augment_crop: float
    hidden_units: int
    embedding_dim: int
    dropout: float
    input_noise: float
    epochs: int
    steps_per_epoch: int
    rooms_per_batch: int
    items_per_room: int
    min_room_items: int
    loss: Literal["cross_category", "multi_similarity"]
    learning_rate: float
    loss_alpha: float
    loss_beta: float
    loss_epsilon: float
    loss_lmda: float
    seed: int


class SqueezeNetWeightsSettings(_Section):
    """Where users elsewhere fetch the SqueezeNet v1.1 ImageNet weights, and their checksum."""

    path: Path  # looked for here (after style.weights_path); fetch-weights downloads here
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    download_timeout_s: float = Field(gt=0)


class StyleBlockSettings(_Section):
    """One featurizer block (`simrec.style.featurizers`); options a kind does not use are null."""

    kind: Literal["colour", "text", "gram", "pooled"]
    mask_background: bool | None = None  # colour: count foreground pixels only
    ngram_max: int | None = Field(default=None, ge=1)  # text: word n-grams 1 … ngram_max
    min_df: int | None = Field(default=None, ge=1)  # text: words in fewer training items dropped
    backbone: Literal["vgg16", "squeezenet"] | None = None  # gram / pooled
    weights: Literal["imagenet", "random"] | None = None
    weights_path: Path | None = None
    layers: list[str] | None = None

    @model_validator(mode="after")
    def _options_of_kind(self) -> StyleBlockSettings:
        needs = {
            "colour": ["mask_background"],
            "text": ["ngram_max", "min_df"],
            "gram": ["backbone", "weights", "layers"],
            "pooled": ["backbone", "weights", "layers"],
        }[self.kind]
        missing = [name for name in needs if getattr(self, name) in (None, [])]
        if missing:
            raise ValueError(f"a {self.kind} block needs {', '.join(missing)}")
        return self


class StyleSelectSettings(_Section):
    """Choosing the featurizer on held-out rooms (`simrec style select`)."""

    blocks: dict[str, StyleBlockSettings]
    candidates: list[list[str]] = Field(min_length=1)  # each: block names, weighted together
    weight_grid: list[float] = Field(min_length=1)  # weights tried for each block after the first
    select_at: int = Field(ge=1)  # validation HR@select_at (pooled over pairs) chooses
    min_items: int = Field(ge=1)  # below this many catalog items `style build` fits gram instead
    two_hop_rooms: int = Field(ge=0)  # two-hop: nearest room photos used per query (0 = off)
    two_hop_weights: list[float]  # weights tried for the two-hop score beside direct similarity
    bootstrap: int = Field(ge=0)  # bootstrap resamples of the queries for each interval
    confidence: float = Field(gt=0, lt=1)
    cache_dir: Path | None  # raw block features cached here (null: not cached)
    seed: int


class StyleSettings(_Section):
    """Gram-matrix style recommender ("complete the look")."""

    featurizer: Literal["selected", "gram"]  # what `style build` fits and registers
    backbone: Literal["vgg16", "squeezenet", "keras_model"]
    # Both sections come from conf/simrec.yaml; None only so that the settings stored in
    # bundles saved before they existed still load.
    squeezenet: SqueezeNetWeightsSettings | None
    weights: Literal["imagenet", "random"]
    weights_path: Path | None
    backbone_path: Path | None
    layers: list[str]
    layer_weights: list[float]
    image_size: int
    pca_dims: int
    gram_power: float
    mask_background: bool
    background_threshold: int
    batch_size: int
    serve_encode_rows: int = Field(gt=0)  # a server's images through the backbone at a time
    metric: Literal["l2", "cosine"]
    categories: list[str]
    pairs: list[str]
    hit_at: list[int]
    colour_bins: int
    min_queries: int
    n: int
    max_n: int
    seed: int
    train: StyleTrainSettings
    select: StyleSelectSettings | None


class ServingSettings(_Section):
    host: str
    port: int
    token_env: str
    min_token_chars: int
    max_body_bytes: int
    max_batch_size: int
    max_image_pixels: int
    image_formats: list[str] = Field(min_length=1)  # Pillow format names the decoder tries
    max_request_pixels: int = Field(gt=0)  # compute budget: image pixels summed over a request
    guard_inline_bytes: int = Field(ge=0)  # bodies checked on the event loop, not a thread
    max_drain_bytes: int = Field(ge=0)  # of an over-limit body, read so the client sees the 413
    shutdown_seconds: float = Field(gt=0)  # SIGTERM → exit within this, in-flight work or not
    search_threads: int
    search_blas_min_queries: int = Field(gt=0)  # exact search of this many queries uses BLAS
    thumbnail_size: int
    registered_model: str
    alias: str
    client_timeout_s: float
    # Micro-batching, overload, readiness, registry follow (values: conf/simrec.yaml only).
    batch_max_rows: int = Field(gt=0)
    batch_max_wait_ms: float = Field(ge=0)
    batch_wait_adaptive: bool
    batch_workers: int = Field(ge=0)  # 0: one per CPU
    tensorflow_threads: int = Field(ge=0)  # 0: CPUs per batch worker
    batch_search_threads: int = Field(ge=0)  # search threads per model call; 0: CPUs per worker
    queue_max_requests: int = Field(gt=0)
    request_timeout_s: float = Field(gt=0)
    retry_after_s: int = Field(ge=0)
    reload_seconds: float = Field(ge=0)
    health_interval_s: float = Field(gt=0)
    metrics_open: bool


class AppSettings(_Section):
    """`simrec app`: the Streamlit demo. A null URL means the registered model in-process."""

    port: int
    address: str
    api_url: str | None
    api_url_env: str
    style_api_url: str | None
    style_api_url_env: str
    token_env: str
    token_file: Path | None  # a mounted Secret; wins over token_env
    fashion_model_uri: str
    style_model_uri: str
    sample_grid: int
    grid_columns: int
    max_upload_bytes: int
    upload_types: list[str] = Field(min_length=1)
    thumbnail_px: int = Field(gt=0)
    query_px: int = Field(gt=0)
    show_error_details: Literal["full", "stacktrace", "type", "none"]


class SearchDimension(_Section):
    """One knob's search distribution, as data; `simrec.tuning.space` turns it into hyperopt.

    Bounds are in the knob's own units (loguniform too: `low: 0.0001`, not its log).
    quniform/qloguniform with whole-number bounds and step yield ints.
    """

    type: Literal["uniform", "loguniform", "quniform", "qloguniform", "choice"]
    low: float | None = None
    high: float | None = None
    q: float | None = None
    options: list[Any] | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> SearchDimension:
        if self.type == "choice":
            if not self.options:
                raise ValueError("a choice needs a non-empty `options` list")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs numeric low < high")
        if self.type in ("loguniform", "qloguniform") and self.low <= 0:
            raise ValueError(f"{self.type} needs low > 0")
        if self.type.startswith("q") and (self.q is None or self.q <= 0):
            raise ValueError(f"{self.type} needs a step q > 0")
        return self


class TuningSettings(_Section):
    max_evals: int = Field(ge=1)
    parallelism: int = Field(ge=1)
    trials: Literal["spark", "local"]
    algo: Literal["tpe", "random"]
    seed: int
    timeout_s: int | None
    threads_per_trial: int | None
    best_params_file: Path
    validation_fraction: float = Field(gt=0.0, lt=1.0)  # rows each trial is scored on
    points_to_evaluate: list[dict[str, Any]]
    # section -> knob -> distribution; a null knob is not searched.
    space: dict[str, dict[str, SearchDimension | None]]

    def dimensions(self) -> dict[str, SearchDimension]:
        """The searched knobs by dotted settings key (`train.learning_rate`)."""
        return {
            f"{section}.{knob}": dimension
            for section, knobs in self.space.items()
            for knob, dimension in knobs.items()
            if dimension is not None
        }


class ReindexSettings(_Section):
    alias: str | None
    embed_batch_size: int = Field(gt=0)


class BatchSettings(_Section):
    output_table: str
    k: int = Field(gt=0)
    rows: Literal["catalog", "all"]
    partitions: int | None = Field(gt=0)
    embed_batch_size: int = Field(gt=0)


class PipelineSettings(_Section):
    """`simrec pipeline`: which steps run beside each other (`simrec.background`)."""

    style_beside_training: bool
    background_priority: Literal["idle", "nice", "normal"]
    background_threads: int | None = Field(gt=0)


class Settings(_Section):
    lake: LakeSettings
    fashion_mnist: FashionMnistSettings
    catalog: CatalogSettings
    spark: SparkSettings
    mlflow: MlflowSettings
    model: ModelSettings
    train: TrainSettings
    distributed: DistributedSettings
    index: IndexSettings
    evaluation: EvaluationSettings
    recommend: RecommendSettings
    style: StyleSettings
    serving: ServingSettings
    tuning: TuningSettings
    app: AppSettings
    reindex: ReindexSettings
    batch: BatchSettings
    promotion: PromotionSettings
    pipeline: PipelineSettings

    @model_validator(mode="after")
    def _check_tuning_knobs(self) -> Settings:
        knobs = self.tuning.dimensions()
        for key in knobs:
            section, _, name = key.partition(".")
            model = getattr(self, section, None) if section != "tuning" else None
            if not isinstance(model, BaseModel) or name not in type(model).model_fields:
                raise ValueError(f"tuning.space: {key!r} is not a setting that can be tuned")
        for point in self.tuning.points_to_evaluate:
            unknown = sorted(set(point) - set(knobs))
            if unknown:
                raise ValueError(f"tuning.points_to_evaluate: {unknown} are not in tuning.space")
        return self

    def flat(self) -> dict[str, Any]:
        """The effective config as dotted keys, for MLflow params."""
        return _flatten(self.model_dump(mode="json"))

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Settings:
        data = self.model_dump(mode="json")
        items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
        for key, value in items:
            _set_dotted(data, key, value)
        return Settings.model_validate(data)


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=5` -> ("train.epochs", 5); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override must look like section.key=value, got {text!r}")
    return key.strip(), yaml.safe_load(raw)


def load_overrides_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of dotted keys to values (what `simrec tune` writes as best.yaml)."""
    with open(path) as handle:
        overrides = yaml.safe_load(handle) or {}
    if not isinstance(overrides, dict) or not all(isinstance(key, str) for key in overrides):
        raise ValueError(f"{path}: expected a mapping of section.key: value")
    return overrides


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ValueError(f"unknown config section {part!r} in {key!r}")
        node = node[part]
    if leaf not in node:
        raise ValueError(f"unknown config key {key!r}")
    node[leaf] = value


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "files":
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_files(path: str | Path | None = None) -> list[Path]:
    """The YAML files of a config: `path`, else $SIMREC_CONFIG, else conf/simrec.yaml; several
    joined with `:` are merged in order (later files win)."""
    spec = str(path or os.environ.get("SIMREC_CONFIG") or DEFAULT_CONFIG)
    return [Path(part) for part in spec.split(os.pathsep) if part]


def load_settings(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Settings:
    """Load defaults from conf/simrec.yaml (or `path`, or $SIMREC_CONFIG) and apply overrides."""
    raw: dict[str, Any] = {}
    for config_path in config_files(path):
        with open(config_path) as handle:
            raw = _merge(raw, yaml.safe_load(handle) or {})
    settings = Settings.model_validate(raw)
    return settings.with_overrides(overrides) if overrides else settings


def configured_section(section: str, **overrides: Any) -> BaseModel:
    """Section `section` of the default config (conf/simrec.yaml, the only source of
    defaults) with `overrides` applied and validated; for code and tests that need one
    section on its own, e.g. `configured_section("spark", master="local[2]")`."""
    current = getattr(load_settings(DEFAULT_CONFIG), section)
    return type(current).model_validate({**current.model_dump(), **overrides})
