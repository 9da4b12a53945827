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
