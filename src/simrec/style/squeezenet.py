"""SqueezeNet v1.1 (Iandola et al. 2016, arXiv:1602.07360), convolutional part, in Keras, with
ImageNet weights loaded by layer name from the keras-squeezenet HDF5 file, and the code that
fetches and verifies that file for users who do not have it.

Layer names follow the weights file (`conv1`, `fireN/squeeze1x1`, `fireN/expand1x1`,
`fireN/expand3x3`, `fireN/concat`, `pool1/3/5`), so `load_weights(by_name=True)` fills every
convolution. Inputs are Caffe-preprocessed pixels (BGR, ImageNet means subtracted, no scaling).
Nothing here downloads anything unless `download_weights` is called explicitly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

import tensorflow as tf

log = logging.getLogger(__name__)

# (squeeze, expand) channels of fire2 … fire9; max pools follow conv1, fire3 and fire5.
FIRE_MODULES = {2: (16, 64), 3: (16, 64), 4: (32, 128), 5: (32, 128)}
FIRE_MODULES.update({6: (48, 192), 7: (48, 192), 8: (64, 256), 9: (64, 256)})
POOL_AFTER = {"conv1": "pool1", "fire3/concat": "pool3", "fire5/concat": "pool5"}
CHUNK_BYTES = 1 << 16


class WeightsChecksumError(ValueError):
    """A weights file whose sha256 is not the expected one (corrupt, truncated or other)."""


def _fire(x: tf.Tensor, module: int, squeeze: int, expand: int) -> tf.Tensor:
    layers = tf.keras.layers
    prefix = f"fire{module}/"
    x = layers.Conv2D(squeeze, 1, activation="relu", name=prefix + "squeeze1x1")(x)
    left = layers.Conv2D(expand, 1, activation="relu", name=prefix + "expand1x1")(x)
    right = layers.Conv2D(expand, 3, padding="same", activation="relu", name=prefix + "expand3x3")(
        x
    )
    return layers.Concatenate(axis=-1, name=prefix + "concat")([left, right])


def squeezenet_v11(input_shape: tuple[int | None, int | None, int] = (None, None, 3)):
    """The SqueezeNet v1.1 feature extractor (no classifier), randomly initialised."""
    layers = tf.keras.layers
    inputs = layers.Input(shape=input_shape, name="input")
    x = layers.Conv2D(64, 3, strides=2, padding="valid", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for module, (squeeze, expand) in FIRE_MODULES.items():
        x = _fire(x, module, squeeze, expand)
        pool = POOL_AFTER.get(f"fire{module}/concat")
        if pool:
            x = layers.MaxPooling2D(3, strides=2, name=pool)(x)
    return tf.keras.Model(inputs, x, name="squeezenet_v11")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(path: Path, sha256: str) -> Path:
    """`path` if its sha256 is `sha256`, else WeightsChecksumError."""
    actual = file_sha256(path)
    if actual != sha256.lower():
        raise WeightsChecksumError(
            f"{path}: sha256 {actual} is not the expected {sha256}; the file is corrupt or "
            "not the SqueezeNet v1.1 ImageNet weights. Delete it and download it again."
        )
    return path


def load_pretrained(model: tf.keras.Model, path: Path, sha256: str) -> tf.keras.Model:
    """Checksum-verify the HDF5 file, then fill the model's layers from it by name; every
    convolution of the model must receive weights (a file missing one is refused)."""
    verify_weights(path, sha256)
    import h5py

    with h5py.File(path, "r") as handle:
        names = {name.decode() if isinstance(name, bytes) else name for name in
                 handle.attrs["layer_names"]}  # fmt: skip
    convs = [layer.name for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    missing = [name for name in convs if name not in names]
    if missing:
        raise ValueError(f"{path} holds no weights for layer(s) {missing}")
    model.load_weights(str(path), by_name=True)
    return model


def download_weights(url: str, sha256: str, destination: Path, timeout_s: float) -> Path:
    """Fetch `url` into `destination` (written through a temporary file in the same folder,
    renamed only once its sha256 matches), or keep an existing verified copy. Never called
    by the build itself: users run `simrec style fetch-weights` once."""
    destination = Path(destination).expanduser()
    if destination.is_file():
        try:
            return verify_weights(destination, sha256)
        except WeightsChecksumError:
            log.warning("%s fails its checksum: downloading it again", destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, destination)
    handle, partial = tempfile.mkstemp(prefix=destination.name, dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as r:
            for chunk in iter(lambda: r.read(CHUNK_BYTES), b""):
                out.write(chunk)
        verify_weights(Path(partial), sha256)
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return destination
