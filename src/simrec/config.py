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
    root: Path = Path("lakehouse")
    fashion_table: str = "fashion_mnist"
    items_table: str = "catalog_items"
    rooms_table: str = "catalog_rooms"
    item_rooms_table: str = "catalog_item_rooms"
    commit_retries: int = Field(ge=0)  # re-plans after losing a commit race to another writer
    commit_retry_wait_s: float = Field(ge=0)


class FashionMnistSettings(_Section):
    source_dir: Path | None = None
    system_dir: Path = Path("/usr/share/datasets/fashion-mnist")
    download_dir: Path = Path("data/fashion-mnist")
    base_url: str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    files: dict[str, str] = Field(default_factory=dict)
    label_names: list[str] = Field(default_factory=list)
    max_rows_per_split: int | None = None


class CatalogSettings(_Section):
    source_dir: Path | None  # None: the verified download in cache_dir
    download_url: str
    cache_dir: Path | None  # None: the user's cache folder (platformdirs)
    download_timeout_s: float = Field(gt=0)
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    image_formats: list[str] = Field(min_length=1)  # Pillow format names the decoder tries
    max_items: int | None = None


class SparkSettings(_Section):
    master: str = "local[*]"
    app_name: str = "simrec"
    local_ip: str | None = "127.0.0.1"
    delta_format: bool = False
    conf: dict[str, str] = Field(default_factory=dict)


class MlflowSettings(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str | None = "mlruns"
    experiment: str = "simrec"
    registry_uri: str | None = None


class ModelSettings(_Section):
    image_size: int = 28
    channels: int = 1
    conv_filters: list[int] = Field(default_factory=lambda: [32, 64, 128])
    convs_per_block: int = 1
    batch_norm: bool = True
    dropout: float = 0.25
    dense_units: int = 0
    embedding_dim: int = 128
    augment: bool = True


class TrainSettings(_Section):
    epochs: int = 12
    steps_per_epoch: int | None = 600
    classes_per_batch: int = 10
    examples_per_class: int = 20
    learning_rate: float = 1e-3
    lr_decay: Literal["cosine", "none"] = "cosine"
    distance: str = "cosine"
    loss_alpha: float = 2.0
    loss_beta: float = 40.0
    loss_epsilon: float = 0.1
    loss_lmda: float = 0.5
    validation_fraction: float = 0.1
    validation_queries: int = 2000
    seed: int = 7
    max_rows: int | None = None
    holdout_classes: list[int] = Field(default_factory=list)


class DistributedSettings(_Section):
    """Horovod-on-Spark data-parallel training (`simrec train --distributed`)."""

    num_proc: int = 2
    scale_learning_rate: bool = True
    batch_per_worker: int | None = None
    reader: Literal["pyarrow", "petastorm"] = "pyarrow"
    read_batch_rows: int = 1024
    shuffle_buffer_rows: int = 2000
    checkpoint_dir: Path | None = None
    nics: list[str] | None = None
    start_timeout_s: int = 600


class IndexSettings(_Section):
    kind: Literal["flat", "hnsw", "ivf"] = "flat"
    metric: Literal["ip", "l2"] = "ip"
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nlist: int = 256
    ivf_nprobe: int = 16


class EvaluationSettings(_Section):
    recall_at: list[int] = Field(default_factory=lambda: [1, 5])
    map_at_r: bool = True
    baseline: Literal["raw_pixels", "none"] = "raw_pixels"
    grid_queries: int = 8
    grid_k: int = 5
    max_queries: int | None = None


class RecommendSettings(_Section):
    k: int = 5
    max_k: int = 100


class StyleTrainSettings(_Section):
    """Transfer learning from rooms: a metric head on frozen style features."""

    folds: int = 5
    holdout_fold: int = 0
    augment_views: int = 1
    augment_crop: float = 0.8
    hidden_units: int = 256
    embedding_dim: int = 64
    dropout: float = 0.3
    input_noise: float = 0.3
    epochs: int = 15
    steps_per_epoch: int = 40
    rooms_per_batch: int = 24
    items_per_room: int = 4
    min_room_items: int = 2
    loss: Literal["cross_category", "multi_similarity"] = "cross_category"
    learning_rate: float = 1e-3
    loss_alpha: float = 2.0
    loss_beta: float = 40.0
    loss_epsilon: float = 0.1
    loss_lmda: float = 0.5
    seed: int = 7


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
    two_hop_rooms: int = Field(ge=0)  # two-hop: nearest room photos used per query (0 = off)
    two_hop_weights: list[float]  # weights tried for the two-hop score beside direct similarity
    bootstrap: int = Field(ge=0)  # bootstrap resamples of the queries for each interval
    confidence: float = Field(gt=0, lt=1)
    cache_dir: Path | None  # raw block features cached here (null: not cached)
    seed: int


class StyleSettings(_Section):
    """Gram-matrix style recommender ("complete the look")."""

    backbone: Literal["vgg16", "squeezenet", "keras_model"] = "vgg16"
    # Both sections come from conf/simrec.yaml; None only so that the settings stored in
    # bundles saved before they existed still load.
    squeezenet: SqueezeNetWeightsSettings | None = None
    weights: Literal["imagenet", "random"] = "imagenet"
    weights_path: Path | None = None
    backbone_path: Path | None = None
    layers: list[str] = Field(
        default_factory=lambda: ["block1_conv2", "block2_conv2", "block3_conv1"]
    )
    layer_weights: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    image_size: int = 128
    pca_dims: int = 64
    gram_power: float = 0.5
    mask_background: bool = True
    background_threshold: int = 240
    batch_size: int = 32
    metric: Literal["l2", "cosine"] = "l2"
    categories: list[str] = Field(default_factory=list)
    pairs: list[str] = Field(
        default_factory=lambda: ["chair:table", "table:chair", "sofa:table", "bed:pillow"]
    )
    hit_at: list[int] = Field(default_factory=lambda: [5, 10, 20])
    colour_bins: int = 8
    min_queries: int = 20
    n: int = 10
    max_n: int = 100
    seed: int = 7
    train: StyleTrainSettings = Field(default_factory=StyleTrainSettings)
    select: StyleSelectSettings | None = None


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    token_env: str = "SIMREC_API_TOKEN"
    min_token_chars: int = 16
    max_body_bytes: int = 10 * 2**20
    max_batch_size: int = 64
    max_image_pixels: int = 25_000_000
    image_formats: list[str] = Field(min_length=1)  # Pillow format names the decoder tries
    max_request_pixels: int = Field(gt=0)  # compute budget: image pixels summed over a request
    max_drain_bytes: int = Field(ge=0)  # of an over-limit body, read so the client sees the 413
    shutdown_seconds: float = Field(gt=0)  # SIGTERM → exit within this, in-flight work or not
    search_threads: int = 1
    thumbnail_size: int = 64
    registered_model: str = "simrec-fashion"
    alias: str = "champion"
    client_timeout_s: float = 30.0
    # Micro-batching, overload, readiness, registry follow (values: conf/simrec.yaml only).
    batch_max_rows: int = Field(gt=0)
    batch_max_wait_ms: float = Field(ge=0)
    queue_max_requests: int = Field(gt=0)
    request_timeout_s: float = Field(gt=0)
    retry_after_s: int = Field(ge=0)
    reload_seconds: float = Field(ge=0)
    health_interval_s: float = Field(gt=0)
    metrics_open: bool


class AppSettings(_Section):
    """`simrec app`: the Streamlit demo. A null URL means the registered model in-process."""

    port: int = 8501
    address: str = "127.0.0.1"
    api_url: str | None = None
    api_url_env: str = "SIMREC_API_URL"
    style_api_url: str | None = None
    style_api_url_env: str = "SIMREC_STYLE_API_URL"
    token_env: str = "SIMREC_API_TOKEN"
    token_file: Path | None  # a mounted Secret; wins over token_env
    fashion_model_uri: str = "models:/simrec-fashion@champion"
    style_model_uri: str = "models:/simrec-style@champion"
    sample_grid: int = 12
    grid_columns: int = 6
    max_upload_bytes: int = 10 * 2**20


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
    max_evals: int = Field(32, ge=1)
    parallelism: int = Field(2, ge=1)
    trials: Literal["spark", "local"] = "spark"
    algo: Literal["tpe", "random"] = "tpe"
    seed: int = 7
    timeout_s: int | None = None
    threads_per_trial: int | None = None
    best_params_file: Path = Path("best.yaml")
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    # section -> knob -> distribution; a null knob is not searched.
    space: dict[str, dict[str, SearchDimension | None]] = Field(default_factory=dict)

    def dimensions(self) -> dict[str, SearchDimension]:
        """The searched knobs by dotted settings key (`train.learning_rate`)."""
        return {
            f"{section}.{knob}": dimension
            for section, knobs in self.space.items()
            for knob, dimension in knobs.items()
            if dimension is not None
        }


class ReindexSettings(_Section):
    alias: str | None = "champion"
    embed_batch_size: int = Field(512, gt=0)


class BatchSettings(_Section):
    output_table: str = "batch_recommendations"
    k: int = Field(5, gt=0)
    rows: Literal["catalog", "all"] = "catalog"
    partitions: int | None = Field(None, gt=0)
    embed_batch_size: int = Field(512, gt=0)


class Settings(_Section):
    lake: LakeSettings = Field(default_factory=LakeSettings)
    fashion_mnist: FashionMnistSettings = Field(default_factory=FashionMnistSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    recommend: RecommendSettings = Field(default_factory=RecommendSettings)
    style: StyleSettings = Field(default_factory=StyleSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    tuning: TuningSettings = Field(default_factory=TuningSettings)
    app: AppSettings = Field(default_factory=AppSettings)
    reindex: ReindexSettings = Field(default_factory=ReindexSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)

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
