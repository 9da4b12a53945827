"""Typed settings: conf/simrec.yaml, overridden by SIMREC_CONFIG and `--set key.path=value`.

One `Settings` object is loaded at the edge (CLI, notebook, MLproject) and passed down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

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


class FashionMnistSettings(_Section):
    source_dir: Path | None = None
    system_dir: Path = Path("/usr/share/datasets/fashion-mnist")
    download_dir: Path = Path("data/fashion-mnist")
    base_url: str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    files: dict[str, str] = Field(default_factory=dict)
    label_names: list[str] = Field(default_factory=list)


class CatalogSettings(_Section):
    source_dir: Path = Path("../shared/data/ikea")
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000


class SparkSettings(_Section):
    master: str = "local[*]"
    app_name: str = "simrec"
    local_ip: str | None = "127.0.0.1"
    conf: dict[str, str] = Field(default_factory=dict)


class MlflowSettings(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str = "mlruns"
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


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    token_env: str = "SIMREC_API_TOKEN"
    min_token_chars: int = 16
    max_body_bytes: int = 10 * 2**20
    max_batch_size: int = 64
    max_image_pixels: int = 25_000_000
    search_threads: int = 1
    thumbnail_size: int = 64
    registered_model: str = "simrec-fashion"
    alias: str = "champion"
    client_timeout_s: float = 30.0


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
    index: IndexSettings = Field(default_factory=IndexSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    recommend: RecommendSettings = Field(default_factory=RecommendSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    reindex: ReindexSettings = Field(default_factory=ReindexSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)

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


def load_settings(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Settings:
    """Load defaults from conf/simrec.yaml (or `path`, or $SIMREC_CONFIG) and apply overrides."""
    config_path = Path(path or os.environ.get("SIMREC_CONFIG") or DEFAULT_CONFIG)
    with open(config_path) as handle:
        raw = yaml.safe_load(handle) or {}
    settings = Settings.model_validate(raw)
    return settings.with_overrides(overrides) if overrides else settings
