from __future__ import annotations

import pytest

from simrec.config import load_settings, parse_override


def test_defaults_load_from_conf_yaml() -> None:
    settings = load_settings()
    assert settings.spark.master == "local[*]"
    assert settings.mlflow.tracking_uri.startswith("sqlite:///")
    assert len(settings.fashion_mnist.label_names) == 10
    assert set(settings.fashion_mnist.files) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }


def test_overrides_are_parsed_as_yaml_and_validated() -> None:
    settings = load_settings(
        overrides=["train.epochs=3", "model.conv_filters=[8, 16]", "index.kind=hnsw"]
    )
    assert settings.train.epochs == 3
    assert settings.model.conv_filters == [8, 16]
    assert settings.index.kind == "hnsw"
    with pytest.raises(ValueError, match="unknown config key"):
        load_settings(overrides=["train.epoch=3"])
    with pytest.raises(ValueError):
        load_settings(overrides=["index.kind=annoy"])
    with pytest.raises(ValueError, match="section.key=value"):
        parse_override("train.epochs")


def test_flat_config_is_loggable() -> None:
    flat = load_settings().flat()
    assert flat["train.epochs"] == load_settings().train.epochs
    assert all(isinstance(key, str) for key in flat)


def test_config_files_joined_with_colons_merge_in_order(tmp_path, monkeypatch) -> None:
    from simrec.config import DEFAULT_CONFIG

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  epochs: 2\nspark:\n  conf:\n    spark.ui.enabled: 'true'\n")
    monkeypatch.setenv("SIMREC_CONFIG", f"{DEFAULT_CONFIG}:{overlay}")
    settings = load_settings()
    defaults = load_settings(DEFAULT_CONFIG)
    assert settings.train.epochs == 2
    assert settings.train.learning_rate == defaults.train.learning_rate  # untouched keys stay
    assert settings.spark.conf["spark.ui.enabled"] == "true"
    assert settings.spark.conf["spark.sql.shuffle.partitions"] == "8"  # nested maps merge
    assert settings.fashion_mnist.files == defaults.fashion_mnist.files
    assert load_settings(overrides=["train.epochs=4"]).train.epochs == 4  # --set still wins
    overlay.write_text("train:\n  epoch: 2\n")
    with pytest.raises(ValueError, match="epoch"):
        load_settings()


def test_small_overlay_applies_to_the_defaults() -> None:
    from simrec.config import DEFAULT_CONFIG

    small = load_settings(f"{DEFAULT_CONFIG}:{DEFAULT_CONFIG.parent / 'small.yaml'}")
    assert small.fashion_mnist.max_rows_per_split and small.catalog.max_items
    assert small.train.epochs * small.train.steps_per_epoch < 100
