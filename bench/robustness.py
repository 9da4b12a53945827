"""Robustness of `simrec serve` for both registered models (simrec-fashion, simrec-style): the
hostile corpus of `simrec.serving.hostile` (JSON shapes, types, encodings, image bombs in
several containers, batch sizes, headers) against a real server process on 127.0.0.1, then an
overload run (64 concurrent clients for 30 s by default).

Recorded per model: cases tried, the statuses seen, the 5xx count (goal 0), the worst growth of
the server's resident memory during one request (goal < 50 MB); under overload, the share of
requests answered 200 and 503 and how many took longer than the server's request timeout
(goal 0). The models are trained/built briefly here: robustness does not depend on quality.

    python -m bench.robustness [--set serving.max_image_pixels=... ...]
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import mlflow
from PIL import Image

from bench.results import LOCAL_IKEA, fresh_workspace, record
from simrec.lake.catalog import ingest_catalog
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse
from simrec.model.train import train
from simrec.serving.hostile import hostile_corpus, is_json_error, send, start_server
from simrec.serving.package import package_run
from simrec.style.build import build_style
from simrec.style.pyfunc import log_style_pyfunc

WORKSPACE = Path(__file__).resolve().parent / ".work" / "robustness"
QUICK = {
    "fashion_mnist.max_rows_per_split": 3000,
    "train.epochs": 1,
    "train.steps_per_epoch": 30,
    "train.validation_queries": 200,
    "style.categories": ["chair", "bed"],  # two: a chair photo is answered with beds
    "style.weights": "random",
    # The selected featurizer's heaviest block is the backbone's Gram vectors: built alone,
    # in seconds, with the default backbone (what a request's memory depends on).
    "style.featurizer": "gram",
}
MODELS = {"fashion": "models:/simrec-fashion@champion", "style": "models:/simrec-style@champion"}
OVERLOAD_CLIENTS = 64
OVERLOAD_SECONDS = 30
# MLflow's scoring server answers 504 after this many seconds
# (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT).
REQUEST_TIMEOUT_S = 60
CORPUS_SEED = 15
MB = 2**20


def _png(rgb: tuple[int, int, int], size: tuple[int, int] = (60, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _prepare(settings) -> None:
    """simrec-fashion and simrec-style registered in the workspace's MLflow store."""
    lake = Lakehouse(settings.lake.root)
    ingested = ingest_fashion_mnist(
        lake,
        settings.fashion_mnist,
        settings.lake.fashion_table,
        max_rows_per_split=settings.fashion_mnist.max_rows_per_split,
    )
    table = lake.pin(ingested.name, ingested.version)
    trained = train(settings, lake, table, run_name="bench-robustness")
    package_run(settings, lake, trained.run_id, force=True)  # served, not gated, here
    source = WORKSPACE / "ikea"
    shutil.copytree(LOCAL_IKEA / "text_data", source / "text_data")
    for category in settings.style.categories:
        shutil.copytree(LOCAL_IKEA / "images" / category, source / "images" / category)
    ingest_catalog(lake, settings.catalog, settings.lake, source_dir=source)
    built = build_style(settings, lake)
    with mlflow.start_run(run_id=built.run_id):
        log_style_pyfunc(built.folder, "simrec-style", settings, alias="champion")


def _corpus_run(server, model: str) -> dict[str, object]:
    cases = hostile_corpus(_png((30, 60, 90)), model, seed=CORPUS_SEED)
    statuses: Counter[int] = Counter()
    not_json, worst_growth, worst_case = 0, 0, ""
    with httpx.Client(timeout=REQUEST_TIMEOUT_S * 2) as client:
        for case in cases:
            (status, body), growth = server.peak_growth(
                lambda case=case: send(client, server.url, server.token, case)
            )
            if growth > worst_growth:
                worst_growth, worst_case = growth, case.name
            statuses[status] += 1
            not_json += status >= 400 and not is_json_error(body)
    return {
        "cases": len(cases),
        "statuses": dict(sorted(statuses.items())),
        "server_errors_5xx": sum(n for status, n in statuses.items() if status >= 500),
        "errors_not_json": not_json,
        "worst_request_rss_growth_mb": round(worst_growth / MB, 1),
        "worst_request": worst_case,
    }


def _overload(server, clients: int, seconds: float) -> dict[str, object]:
    body = json.dumps(
        {"dataframe_records": [{"image": base64.b64encode(_png((200, 80, 30))).decode()}]}
    ).encode()
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    statuses: Counter[str] = Counter()
    late = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal late
        with httpx.Client(timeout=REQUEST_TIMEOUT_S + 30) as http:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    outcome = str(
                        http.post(
                            f"{server.url}/invocations", content=body, headers=headers
                        ).status_code
                    )
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                with lock:
                    statuses[outcome] += 1
                    late += time.monotonic() - started > REQUEST_TIMEOUT_S

    rss_before = server.resident_bytes()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(statuses.values())
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": total,
        "statuses": dict(sorted(statuses.items())),
        "share_200": round(statuses["200"] / total, 3) if total else 0.0,
        "share_503": round(statuses["503"] / total, 3) if total else 0.0,
        "beyond_timeout": late,
        "rss_mb_before": round(rss_before / MB),
        "rss_mb_after": round(server.resident_bytes() / MB),
    }


def main(overrides: list[str]) -> dict[str, object]:
    settings = fresh_workspace(WORKSPACE, overrides, QUICK)
    WORKSPACE.mkdir(parents=True, exist_ok=True)
    _prepare(settings)
    token = secrets.token_urlsafe(24)
    token_file = WORKSPACE / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    args = [
        f"--set={o}" for o in [f"mlflow.tracking_uri={settings.mlflow.tracking_uri}", *overrides]
    ]
    by_model: dict[str, dict[str, object]] = {}
    for model, uri in MODELS.items():
        server = start_server(uri, str(token_file), token, args, env)
        try:
            corpus = _corpus_run(server, model)
            overload = _overload(server, OVERLOAD_CLIENTS, OVERLOAD_SECONDS)
        finally:
            (WORKSPACE / f"{model}-serve.log").write_text(server.stop())
        by_model[model] = {"corpus": corpus, "overload": overload}
        print(f"{model}: corpus {corpus}\n{model}: overload {overload}")
    summary: dict[str, object] = {}
    for model, result in by_model.items():
        corpus, overload = result["corpus"], result["overload"]
        summary[f"{model}_cases"] = corpus["cases"]
        summary[f"{model}_5xx"] = corpus["server_errors_5xx"]
        summary[f"{model}_worst_rss_growth_mb"] = corpus["worst_request_rss_growth_mb"]
        summary[f"{model}_overload_share_200"] = overload["share_200"]
        summary[f"{model}_overload_share_503"] = overload["share_503"]
        summary[f"{model}_overload_beyond_timeout"] = overload["beyond_timeout"]
    summary["goals_met"] = all(
        r["corpus"]["server_errors_5xx"] == 0
        and r["corpus"]["worst_request_rss_growth_mb"] < 50
        and r["overload"]["beyond_timeout"] == 0
        for r in by_model.values()
    )
    result = {"summary": summary, "models": by_model}
    record("robustness", result)
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    main(parser.parse_args().overrides)
