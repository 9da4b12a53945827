"""Figures logged to MLflow: a query → top-k result grid."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def result_grid(
    query_pixels: np.ndarray,
    query_titles: list[str],
    result_pixels: list[np.ndarray],
    result_titles: list[list[str]],
    result_hits: list[list[bool]],
) -> plt.Figure:
    """One row per query: the query, then its results (green title = same label, red = not)."""
    rows, columns = len(query_pixels), 1 + max(len(results) for results in result_pixels)
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for row in range(rows):
        panels = [(query_pixels[row], query_titles[row], "black")]
        panels += [
            (pixels, title, "green" if hit else "red")
            for pixels, title, hit in zip(
                result_pixels[row], result_titles[row], result_hits[row], strict=True
            )
        ]
        for column, axis in enumerate(axes[row]):
            axis.axis("off")
            if column < len(panels):
                pixels, title, colour = panels[column]
                axis.imshow(pixels.squeeze(), cmap="gray" if pixels.shape[-1] == 1 else None)
                axis.set_title(title, fontsize=7, color=colour)
    axes[0][0].set_title("query\n" + query_titles[0], fontsize=7)
    figure.tight_layout()
    return figure


def embedding_map(
    embeddings: np.ndarray, labels: np.ndarray, label_names: dict[int, str]
) -> plt.Figure:
    """A 2-D PCA projection of `embeddings`, one colour per class."""
    from sklearn.decomposition import PCA

    points = PCA(n_components=2).fit_transform(embeddings)
    figure, axis = plt.subplots(figsize=(6, 5))
    colours = plt.get_cmap("tab10")
    for position, label in enumerate(np.unique(labels)):
        chosen = labels == label
        axis.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=4,
            color=colours(position % colours.N),
            label=label_names.get(int(label), str(label)),
        )
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.set_title("test-query embeddings (PCA)")
    axis.legend(fontsize=7, markerscale=3, loc="best")
    figure.tight_layout()
    return figure
