"""Write src/simrec/lake/data/ikea_manifest.json: the sha256 of every file of a local copy of
the IvonaTau/ikea dataset (default ../shared/data/ikea), which the download is checked against.

    .venv/bin/python scripts/make_ikea_manifest.py [IKEA_DIR]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "src" / "simrec" / "lake" / "data" / "ikea_manifest.json"
COMMIT = "6f316e3"  # IvonaTau/ikea commit the local copy was taken from (shared/data/README.md)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(source: Path) -> None:
    files = {
        path.relative_to(source).as_posix(): sha256_file(path)
        for path in sorted(source.rglob("*"))
        if path.is_file()
    }
    manifest = {"repository": "IvonaTau/ikea", "commit": COMMIT, "files": files}
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{MANIFEST}: {len(files)} files from {source}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO.parent / "shared" / "data" / "ikea"))
