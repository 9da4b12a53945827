"""Complete-the-look quality of the *registered* style model, held out, on the full catalog.

`simrec style build` (what `simrec pipeline` runs) chooses the featurizer (colour histogram,
product-text TF-IDF, SqueezeNet ImageNet Gram / pooled features, weighted combinations, two-hop
through room photos) by a nested cross-fit over the item folds and bundles the winner;
`register_style` registers it and runs the promotion gate on its held-out figures. For every
ordered category pair with ≥ `style.min_queries` eligible queries: HR@5/10/20 of that procedure
on items held out from everything fitted or chosen, each with a bootstrap interval, beside the
8×8×8 colour histogram (with its intervals) and the exact random expectation on the same
queries and pool. Goals: HR@10 ≥ colour's on every such pair; chair→table HR@5/10/20 ≥
0.40/0.55/0.75. Also ms per query of the registered pyfunc at batch 1 and 32 (query images
that are not catalog photos, so every one goes through the featurizer, as one batch).

    nice -n 19 python -m bench.style [--set style.select.candidates=[[colour],[text]] ...]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from bench.results import fresh_workspace, local_catalog, record
from simrec.lake.catalog import ingest_catalog
from simrec.lake.tables import Lakehouse
from simrec.serving.style_promotion import register_style
from simrec.style.build import build_style
from simrec.style.select import COLOUR, heldout_figures, never_worse_than_colour

WORKSPACE = Path(__file__).resolve().parent / ".work" / "style"
CACHE = Path(__file__).resolve().parent / ".work" / "style-features"  # survives fresh_workspace
TARGET = {5: 0.40, 10: 0.55, 20: 0.75}
TARGET_PAIR = "chair:table"
GOAL_AT = 10
BATCHES = (1, 32)
REPEATS = {1: 10, 32: 3}


def _query_images(lake: Lakehouse, table: str, count: int) -> list[str]:
    """Mirrored catalog photos, re-encoded: realistic queries no catalog checksum matches."""
    images = lake.read(table, columns=["image"]).column("image").to_pylist()[:count]
    out = []
    for payload in images:
        buffer = io.BytesIO()
        image = Image.open(io.BytesIO(payload)).convert("RGB")
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, format="JPEG", quality=90)
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def ms_per_query(model, images: list[str], batch: int, repeats: int) -> float:
    frame = pd.DataFrame({"image": images[:batch], "k": [10] * batch})
    model.predict(frame)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(frame)
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) / batch * 1000, 1)


def _cell(row: dict, n: int, prefix: str = "") -> str:
    low, high = row[f"{prefix}hr_at_{n}_interval"]
    return f"{row[f'{prefix}hr_at_{n}']:.2f} [{low:.2f}–{high:.2f}]"


def _triple(row: dict, prefix: str = "") -> str:
    return "/".join(f"{row[f'{prefix}hr_at_{n}']:.2f}" for n in TARGET)


def pair_line(row: dict) -> str:
    """HR@5/10/20 with 90% bootstrap intervals, colour's likewise, random's expectation."""
    model = " / ".join(_cell(row, n) for n in TARGET)
    colour = " / ".join(_cell(row, n, "colour_") for n in TARGET)
    return f"{model}; colour {colour}; random {_triple(row, 'random_')}"


def main(overrides: list[str]) -> dict[str, object]:
    defaults = {"style.select.cache_dir": str(CACHE), **local_catalog()}
    settings = fresh_workspace(WORKSPACE, overrides, defaults)
    load_before = round(os.getloadavg()[0], 1)
    lake = Lakehouse(settings.lake.root)
    ingest_catalog(lake, settings.catalog, settings.lake)

    built = build_style(settings, lake)  # what `simrec pipeline` and `style build` register
    if built.selection is None:
        raise SystemExit(f"style build did not select: {built.bundle.meta['featurizer_choice']}")
    selected = built.selection
    uri, gate = register_style(settings, lake, built.run_id, built.folder)
    model = mlflow.pyfunc.load_model(uri)
    figures = heldout_figures(built.run_id)  # what the registered model's run recorded
    images = _query_images(lake, settings.lake.items_table, max(BATCHES))
    timing = {batch: ms_per_query(model, images, batch, REPEATS[batch]) for batch in BATCHES}

    target = next(row for row in figures if row["pair"] == TARGET_PAIR)
    below = [
        row["pair"] for row in figures if row[f"hr_at_{GOAL_AT}"] < row[f"colour_hr_at_{GOAL_AT}"]
    ]
    winner = selected.protocol.winner
    summary: dict[str, object] = {
        "registered featurizer": f"{winner.name} (weights {list(winner.weights)})",
        "why": built.bundle.meta["featurizer_choice"],
        "chosen per test fold": ", ".join(
            f["chosen"]["candidate"] for f in selected.protocol.folds
        ),
        "promotion gate": gate.summary() if gate else "not run",
        "pairs with ≥ 20 eligible queries": len(figures),
        f"pairs with HR@{GOAL_AT} ≥ colour's": len(figures) - len(below),
        f"pairs with HR@{GOAL_AT} below colour's": ", ".join(below) or "none",
        f"mean HR@{GOAL_AT} over the pairs (colour)": (
            f"{np.mean([r[f'hr_at_{GOAL_AT}'] for r in figures]):.3f} "
            f"({np.mean([r[f'colour_hr_at_{GOAL_AT}'] for r in figures]):.3f})"
        ),
        f"goal: HR@{GOAL_AT} ≥ colour on every pair": never_worse_than_colour(figures, GOAL_AT),
        "goal: chair→table HR@5/10/20 ≥ 0.40/0.55/0.75": all(
            target[f"hr_at_{n}"] >= goal for n, goal in TARGET.items()
        ),
    }
    for row in figures:
        source, to = row["pair"].split(":")
        summary[f"{source}→{to} HR@5/10/20 held out, 90% CI (q={row['queries']})"] = pair_line(row)
    two_hop = selected.heldout.get("selected+two_hop")
    if two_hop:
        row = next(r for r in two_hop if r["pair"] == TARGET_PAIR)
        summary["chair→table with two-hop via room photos (not deployed)"] = _triple(row)
    for batch, ms in timing.items():
        summary[f"ms per query, batch {batch}"] = ms
    summary["select + build minutes"] = round(selected.seconds / 60, 1)
    summary["load average (1 min) before / after"] = f"{load_before} / {os.getloadavg()[0]:.1f}"
    candidates = {
        key: [
            {k: v for k, v in row.items() if not k.startswith(("colour_", "random_"))}
            for row in rows
        ]
        for key, rows in selected.heldout.items()
        if key not in ("selected", COLOUR)
    }
    result = {
        "summary": summary,
        "weights_source": built.bundle.meta["weights_source"],
        "registered_model": uri,
        "heldout_selected": figures,
        "heldout_candidates": candidates,
        "validation": selected.validation,
        "overrides": overrides,
        "style": settings.style.model_dump(mode="json"),
    }
    record("style", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    main(parser.parse_args().overrides)
