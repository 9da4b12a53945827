"""SqueezeNet v1.1 with the real ImageNet weights (the shared copy, never downloaded in tests):
built in simrec, filled by layer name, checksum-verified; the download-and-verify code runs
against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import logging
import shutil
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from simrec.config import load_settings
from simrec.style.backbone import build_backbone
from simrec.style.squeezenet import (
    WeightsChecksumError,
    download_weights,
    load_pretrained,
    squeezenet_v11,
)

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "data" / "weights" / "squeezenet_v1.1_imagenet_notop.h5"
LAYERS = ["conv1", "fire2/concat", "fire9/concat"]

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} not present")


def _style(**values: object):
    base = load_settings().style
    update = {"backbone": "squeezenet", "weights": "imagenet", "weights_path": WEIGHTS}
    update.update(image_size=64, layers=LAYERS, layer_weights=[1.0] * len(LAYERS))
    update.update(values)
    return base.model_copy(update=update)


def _file_weights(layer: str) -> list[np.ndarray]:
    with h5py.File(WEIGHTS, "r") as handle:
        group = handle[layer]
        return [np.asarray(group[name]) for name in group.attrs["weight_names"]]


def test_every_convolution_gets_its_imagenet_weights_by_name() -> None:
    backbone = build_backbone(_style())
    assert backbone.weights_source == f"imagenet:{WEIGHTS}"
    assert backbone.preprocess == "vgg16"  # Caffe: BGR, ImageNet means, no scaling
    model = squeezenet_v11((64, 64, 3))
    load_pretrained(model, WEIGHTS, _style().squeezenet.sha256)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert len(convs) == 1 + 8 * 3
    for layer in convs:
        for got, want in zip(layer.get_weights(), _file_weights(layer.name), strict=True):
            np.testing.assert_array_equal(got, want)
    shapes = [tuple(out.shape[1:]) for out in backbone.model.outputs]
    assert shapes == [(31, 31, 64), (15, 15, 128), (3, 3, 512)]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    maps = backbone.feature_maps(pixels)
    assert maps[-1].max() > 0  # real ReLU activations, not a dead network


def test_a_corrupt_weights_file_is_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "squeezenet.h5"
    corrupt.write_bytes(WEIGHTS.read_bytes()[:-1] + b"x")
    with pytest.raises(WeightsChecksumError, match="sha256"):
        build_backbone(_style(weights_path=corrupt))


def test_missing_file_falls_back_to_random_filters_with_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _style(weights_path=None)
    settings.squeezenet.path = tmp_path / "absent.h5"
    with caplog.at_level(logging.WARNING, logger="simrec.style.backbone"):
        backbone = build_backbone(settings)
    assert backbone.weights_source.startswith("random(")
    assert "squeezenet ImageNet weights not found" in caplog.text


@pytest.fixture
def weights_server(tmp_path: Path):
    """A local HTTP server with the real file and a tampered one."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(WEIGHTS, served / "good.h5")
    (served / "bad.h5").write_bytes(b"not weights")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_the_checksum_before_keeping_the_file(
    tmp_path: Path, weights_server: str
) -> None:
    settings = _style().squeezenet
    target = tmp_path / "cache" / "squeezenet.h5"
    with pytest.raises(WeightsChecksumError):
        download_weights(f"{weights_server}/bad.h5", settings.sha256, target, 10)
    assert not target.exists() and not list(target.parent.iterdir())  # nothing half-written
    got = download_weights(f"{weights_server}/good.h5", settings.sha256, target, 10)
    assert got == target and target.read_bytes() == WEIGHTS.read_bytes()
    # A verified copy is kept without fetching again (the server would now serve garbage).
    assert download_weights(f"{weights_server}/bad.h5", settings.sha256, target, 10) == target
    target.write_bytes(b"truncated")  # a corrupt cached copy is replaced
    download_weights(f"{weights_server}/good.h5", settings.sha256, target, 10)
    assert target.read_bytes() == WEIGHTS.read_bytes()
