"""The k most similar catalog items for a query image file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simrec.config import Settings
from simrec.images import open_image, to_array
from simrec.model.embedding import embed
from simrec.runs import load_embedding_model, load_index
from simrec.tracking import setup_mlflow


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item_id: str
    label: int
    label_name: str
    distance: float


def recommend_for_image(
    settings: Settings, run_id: str, image_path: Path, k: int
) -> list[Recommendation]:
    if not 0 < k <= settings.recommend.max_k:
        raise ValueError(f"k must be between 1 and {settings.recommend.max_k}, got {k}")
    payload = Path(image_path).read_bytes()
    pixels = to_array(
        open_image(
            payload,
            str(image_path),
            settings.serving.max_image_pixels,
            settings.serving.image_formats,
        ),
        settings.model.image_size,
        settings.model.channels,
    )
    setup_mlflow(settings.mlflow)
    model = load_embedding_model(run_id)
    bundle = load_index(run_id)
    ids, distances = bundle.index.search(embed(model, pixels[None]), k)
    items = bundle.items.set_index("id")
    return [
        Recommendation(
            rank + 1,
            item_id,
            int(items.at[item_id, "label"]),
            str(items.at[item_id, "label_name"]),
            float(distance),
        )
        for rank, (item_id, distance) in enumerate(zip(ids[0], distances[0], strict=True))
        if item_id is not None
    ]
