"""IKEA catalog → Delta: product photos, room scenes, and which products appear in which rooms.

Reads the IKEA interior-design dataset (`images/<folder>/<file>` plus the Python-2 pickles in
`text_data/`) and syncs three tables with it (`simrec.lake.transaction`, all or nothing):

- items: one row per product photo (id = file stem, e.g. '802.538.09'), text from
  `products_dict.p` when it has an entry, a semantic category, and the image bytes;
- rooms: one row per room scene (id = file stem), the image bytes when the file exists;
- item_rooms: (item, room) pairs from `item_to_room.p` for the items being written.

The dataset's folder names disagree with the categories used in `item_to_room.p` keys (`table`
lives in `dining table`, `sofa` in `couch`, `mirror`/`pillow`/bare keys in `objects`); that is
handled by the `KEY_FOLDERS` / `FOLDER_CATEGORIES` tables below, never by special-casing ids.

Every image is read, size-checked and fully decoded before anything is written, so one bad file
fails the whole batch and leaves every table at its previous version. Without a local copy
(`catalog.source_dir` null) the dataset is downloaded and verified first (`ikea_download`).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, cast

import pyarrow as pa

from simrec.config import CatalogSettings, LakeSettings
from simrec.images import InvalidImageError, open_image, sha256_hex
from simrec.lake.sync import SyncResult
from simrec.lake.tables import Lakehouse
from simrec.lake.transaction import TableSync, sync_tables
from simrec.progress import progress

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
TEXT_DIR = "text_data"
ROOM_FOLDER = "room_scenes"
GENERIC_FOLDER = "objects"
OTHER_CATEGORY = "other"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})
DESCRIPTION_PREFIX = "View more product information"
MAX_LISTED_PROBLEMS = 20

PICKLES = {
    "products": "products_dict.p",
    "item_to_room": "item_to_room.p",
    "room_to_items": "room_to_items.p",
    "room_categories": "categories_dict.p",
}

# item_to_room key folder -> (category, image folder the file is expected in).
KEY_FOLDERS: dict[str, tuple[str, str]] = {
    "bed": ("bed", "bed"),
    "chair": ("chair", "chair"),
    "table": ("table", "dining table"),
    "sofa": ("sofa", "couch"),
    "mirror": ("mirror", GENERIC_FOLDER),
    "pillow": ("pillow", GENERIC_FOLDER),
    "plant_pot": ("plant_pot", "plant_pot"),
}

# image folder -> category, for items whose item_to_room key names no category (or has no key).
FOLDER_CATEGORIES: dict[str, str] = {
    "bed": "bed",
    "chair": "chair",
    "clock": "clock",
    "couch": "sofa",
    "dining table": "table",
    "plant_pot": "plant_pot",
}

_TIMESTAMP = pa.timestamp("us", tz="UTC")

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        ("category", pa.string()),
        ("folder", pa.string()),
        ("name", pa.string()),
        ("type", pa.string()),
        ("colour", pa.string()),
        ("size", pa.string()),
        ("description", pa.string()),
        ("image", pa.binary()),
        ("sha256", pa.string()),
        ("source", pa.string()),
        ("ingested_at", _TIMESTAMP),
    ]
)

ROOMS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        ("room_category", pa.string()),
        ("image", pa.binary()),
        ("sha256", pa.string()),
        ("has_image", pa.bool_()),
        ("source", pa.string()),
        ("ingested_at", _TIMESTAMP),
    ]
)

ITEM_ROOMS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        ("item_id", pa.string()),
        ("room_id", pa.string()),
    ]
)


class CatalogSourceError(FileNotFoundError):
    """The catalog folder, its images folder or one of its pickles is missing."""


class CatalogDataError(ValueError):
    """A catalog pickle that cannot be read or does not hold what it should."""


class CatalogImageError(InvalidImageError):
    """One or more catalog images failed validation; `problems` lists one message per file."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        suffix = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(problems)} catalog image(s) failed validation; nothing was written:\n  "
            f"{listed}{suffix}"
        )


@dataclass(frozen=True)
class CatalogMetadata:
    """The four pickles of `text_data/`, decoded."""

    products: dict[str, dict[str, Any]]
    item_to_room: dict[str, list[str]]
    room_to_items: dict[str, list[str]]
    room_categories: dict[str, str]


@dataclass(frozen=True)
class ItemPlan:
    """One product photo to ingest, before its bytes are read."""

    id: str
    category: str
    folder: str
    path: Path
    source: str
    rooms: tuple[str, ...]  # room ids from item_to_room, deduplicated, in order


@dataclass(frozen=True)
class RoomPlan:
    """One room scene to ingest; `path` is None when its image file does not exist."""

    id: str
    category: str | None
    path: Path | None
    source: str


# ---------------------------------------------------------------- source files and pickles


def check_source(source_dir: Path) -> Path:
    """The dataset's `images/` folder, or CatalogSourceError naming what is missing."""
    if not source_dir.is_dir():
        raise CatalogSourceError(
            f"IKEA catalog folder {source_dir} does not exist (set catalog.source_dir)"
        )
    images = source_dir / IMAGES_DIR
    if not images.is_dir():
        raise CatalogSourceError(f"IKEA catalog folder {source_dir} has no {IMAGES_DIR}/ folder")
    return images


def _load_pickle(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise CatalogSourceError(f"IKEA catalog pickle {path} is missing")
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle, encoding="latin1")  # Python-2 pickles of str
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as error:
        raise CatalogDataError(f"{path}: not a readable pickle ({error})") from error
    if not isinstance(data, dict):
        raise CatalogDataError(f"{path}: expected a dict, found {type(data).__name__}")
    return data


def load_metadata(source_dir: Path) -> CatalogMetadata:
    """Decode the pickles of `source_dir/text_data`; a missing one is an error naming it."""
    text_dir = source_dir / TEXT_DIR
    data = {field: _load_pickle(text_dir / name) for field, name in PICKLES.items()}
    return CatalogMetadata(**data)


def scan_product_files(images_dir: Path) -> dict[str, list[Path]]:
    """File stem -> image files with that stem, across every folder except the room scenes.

    Files in a named (non-`objects`) folder come first, so `[0]` is the most specific copy.
    """
    by_stem: dict[str, list[Path]] = {}
    for folder in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        if folder.name == ROOM_FOLDER:
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                log.debug("skipping %s: not an image file name", path)
                continue
            by_stem.setdefault(path.stem, []).append(path)
    for paths in by_stem.values():
        paths.sort(key=lambda p: (p.parent.name == GENERIC_FOLDER, p.parent.name, p.name))
    return by_stem


def scan_room_files(images_dir: Path) -> dict[str, Path]:
    """Room file stem -> path, for the room scenes that exist."""
    folder = images_dir / ROOM_FOLDER
    if not folder.is_dir():
        log.warning("%s does not exist: every room will be ingested without an image", folder)
        return {}
    return {
        path.stem: path
        for path in sorted(folder.iterdir())
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_SUFFIXES
    }


# ---------------------------------------------------------------- planning rows


def _stem(reference: str) -> str:
    return PurePosixPath(reference).stem


def parse_item_key(key: str) -> tuple[str | None, str]:
    """'images/bed/802.538.09.jpg' -> ('bed', '802.538.09'); 'images/x.jpg' -> (None, 'x')."""
    parts = PurePosixPath(key).parts
    folder = parts[-2] if len(parts) >= 3 else None
    return folder, _stem(key)


def _choose_file(paths: list[Path], key_folder: str | None) -> Path:
    """The copy in the folder the key points at, else the first non-`objects` copy."""
    expected = KEY_FOLDERS.get(key_folder, (None, None))[1] if key_folder else None
    for path in paths:
        if path.parent.name == expected:
            return path
    return paths[0]


def _category(key_folder: str | None, file_folder: str) -> str:
    if key_folder in KEY_FOLDERS:
        return KEY_FOLDERS[key_folder][0]
    if key_folder is not None:
        log.warning("unknown item_to_room key folder %r; using the image folder", key_folder)
    return FOLDER_CATEGORIES.get(file_folder, OTHER_CATEGORY)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def plan_items(
    files: dict[str, list[Path]],
    metadata: CatalogMetadata,
    source_dir: Path,
    max_items: int | None = None,
) -> list[ItemPlan]:
    """One plan per product file stem (sorted by id), the first `max_items` when given."""
    keys: dict[str, tuple[str | None, list[str]]] = {}
    for key, rooms in metadata.item_to_room.items():
        key_folder, stem = parse_item_key(key)
        if stem not in files:
            log.info("item_to_room key %s has no image file; skipped", key)
            continue
        keys[stem] = (key_folder, list(rooms or []))
    ids = sorted(files)
    if max_items is not None:
        ids = ids[:max_items]
    plans = []
    for item_id in ids:
        key_folder, rooms = keys.get(item_id, (None, []))
        path = _choose_file(files[item_id], key_folder)
        plans.append(
            ItemPlan(
                id=item_id,
                category=_category(key_folder, path.parent.name),
                folder=path.parent.name,
                path=path,
                source=path.relative_to(source_dir).as_posix(),
                rooms=_unique(_stem(room) for room in rooms),
            )
        )
    return plans


def _room_references(metadata: CatalogMetadata, room_files: dict[str, Path]) -> dict[str, str]:
    """Every room id the dataset mentions -> its source path relative to the dataset folder."""
    references: dict[str, str] = {}
    for rooms in metadata.item_to_room.values():
        for room in rooms or []:
            references.setdefault(_stem(room), room)
    for room in metadata.room_to_items:
        references.setdefault(_stem(room), room)
    for name in metadata.room_categories:
        references.setdefault(_stem(name), f"{IMAGES_DIR}/{ROOM_FOLDER}/{name}")
    for stem, path in room_files.items():
        references.setdefault(stem, f"{IMAGES_DIR}/{ROOM_FOLDER}/{path.name}")
    return references


def plan_rooms(
    items: list[ItemPlan],
    metadata: CatalogMetadata,
    room_files: dict[str, Path],
    source_dir: Path,
    only_touched: bool,
) -> list[RoomPlan]:
    """Room plans sorted by id: every room known, or (`only_touched`) those the items touch."""
    references = _room_references(metadata, room_files)
    categories = {_stem(name): category for name, category in metadata.room_categories.items()}
    wanted = {room for item in items for room in item.rooms} if only_touched else set(references)
    plans = []
    for room_id in sorted(wanted):
        path = room_files.get(room_id)
        source = (
            path.relative_to(source_dir).as_posix() if path is not None else references[room_id]
        )
        plans.append(RoomPlan(room_id, categories.get(room_id), path, source))
    return plans


# ---------------------------------------------------------------- reading and validating


def read_image(path: Path, settings: CatalogSettings) -> bytes:
    """The bytes of `path`, checked for size (before reading) and decodability."""
    source = str(path)
    limit = settings.max_image_bytes
    size = path.stat().st_size
    if size > limit:
        raise InvalidImageError(f"{source}: {size} bytes exceeds the limit of {limit} bytes")
    with open(path, "rb") as handle:
        payload = handle.read(limit + 1)  # never more than the limit, even if the file grew
    if len(payload) > limit:
        raise InvalidImageError(f"{source}: more than the limit of {limit} bytes")
    open_image(payload, source, settings.max_image_pixels, settings.image_formats)
    return payload


def read_images(
    paths: list[Path], settings: CatalogSettings, desc: str, problems: list[str]
) -> list[bytes | None]:
    """Bytes for each path, or None (with a message appended to `problems`) if it is invalid."""
    payloads: list[bytes | None] = []
    for path in progress(paths, desc=desc, unit="img"):
        try:
            payloads.append(read_image(path, settings))
        except InvalidImageError as error:
            payloads.append(None)
            problems.append(str(error))
        except OSError as error:
            payloads.append(None)
            problems.append(f"{path}: cannot be read ({error})")
    return payloads


# ---------------------------------------------------------------- building tables


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def _description(value: Any) -> str | None:
    text = _text(value)
    if text is not None and text.startswith(DESCRIPTION_PREFIX):
        text = _text(text[len(DESCRIPTION_PREFIX) :])
    return text


def build_items(
    plans: list[ItemPlan],
    payloads: list[bytes],
    products: dict[str, dict[str, Any]],
    ingested_at: datetime,
) -> pa.Table:
    entries = [products.get(plan.id) or {} for plan in plans]
    return pa.table(
        {
            "id": [plan.id for plan in plans],
            "category": [plan.category for plan in plans],
            "folder": [plan.folder for plan in plans],
            "name": [_text(entry.get("name")) for entry in entries],
            "type": [_text(entry.get("type")) for entry in entries],
            "colour": [_text(entry.get("color")) for entry in entries],
            "size": [_text(entry.get("size")) for entry in entries],
            "description": [_description(entry.get("desc")) for entry in entries],
            "image": payloads,
            "sha256": [sha256_hex(payload) for payload in payloads],
            "source": [plan.source for plan in plans],
            "ingested_at": [ingested_at] * len(plans),
        },
        schema=ITEMS_SCHEMA,
    )


def build_rooms(
    plans: list[RoomPlan], payloads: list[bytes | None], ingested_at: datetime
) -> pa.Table:
    return pa.table(
        {
            "id": [plan.id for plan in plans],
            "room_category": [plan.category for plan in plans],
            "image": payloads,
            "sha256": [sha256_hex(p) if p is not None else None for p in payloads],
            "has_image": [p is not None for p in payloads],
            "source": [plan.source for plan in plans],
            "ingested_at": [ingested_at] * len(plans),
        },
        schema=ROOMS_SCHEMA,
    )


def build_item_rooms(items: list[ItemPlan]) -> pa.Table:
    pairs = [(item.id, room) for item in items for room in item.rooms]
    return pa.table(
        {
            "id": [f"{item_id}|{room_id}" for item_id, room_id in pairs],
            "item_id": [item_id for item_id, _ in pairs],
            "room_id": [room_id for _, room_id in pairs],
        },
        schema=ITEM_ROOMS_SCHEMA,
    )


# ---------------------------------------------------------------- entry point


ITEM_COMPARE = [name for name in ITEMS_SCHEMA.names if name not in ("id", "image", "ingested_at")]
ROOM_COMPARE = [name for name in ROOMS_SCHEMA.names if name not in ("id", "image", "ingested_at")]
PAIR_COMPARE = ["item_id", "room_id"]


def resolve_source(settings: CatalogSettings, source_dir: Path | None = None) -> Path:
    """`source_dir`, else `catalog.source_dir`, else the verified download in the cache."""
    chosen = source_dir if source_dir is not None else settings.source_dir
    if chosen is not None:
        return Path(chosen).expanduser().resolve()
    from simrec.lake.ikea_download import ensure_catalog

    return ensure_catalog(settings).folder


def ingest_catalog(
    lake: Lakehouse,
    settings: CatalogSettings,
    lake_settings: LakeSettings,
    source_dir: Path | None = None,
    max_items: int | None = None,
    prune: bool = False,
) -> dict[str, SyncResult]:
    """Sync the IKEA catalog into the items, rooms and item_rooms tables, all or nothing.

    By id and content (sha256 of the image, text, category, ...): new rows are inserted,
    changed ones updated, and with `prune` rows the source no longer has are deleted; a plain
    ingest never deletes. Each table gets at most one Delta commit, carrying the counts and the
    versions of all three tables (see `simrec.lake.transaction`). Every image is validated
    before the first commit. `max_items` (default `settings.max_items`) keeps the first items
    by sorted id, and only the rooms and pairs they touch; it cannot be combined with `prune`.
    Returns {"items": ..., "rooms": ..., "item_rooms": ...}.
    """
    if max_items is None:
        max_items = settings.max_items
    if max_items is not None and max_items < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items}")
    if prune and max_items is not None:
        raise ValueError(
            "--sync deletes what the source lacks, so it needs the whole source: it cannot be "
            f"combined with max_items ({max_items})"
        )
    source_dir = resolve_source(settings, source_dir)
    images_dir = check_source(source_dir)
    metadata = load_metadata(source_dir)
    files = scan_product_files(images_dir)
    if not files:
        raise CatalogSourceError(f"no product images found under {images_dir}")
    room_files = scan_room_files(images_dir)

    items = plan_items(files, metadata, source_dir, max_items)
    rooms = plan_rooms(items, metadata, room_files, source_dir, only_touched=max_items is not None)
    log.info("IKEA catalog from %s: %d items, %d rooms", source_dir, len(items), len(rooms))

    problems: list[str] = []
    item_payloads = read_images(
        [item.path for item in items], settings, "reading catalog item images", problems
    )
    room_paths = [room.path for room in rooms if room.path is not None]
    room_payloads = iter(read_images(room_paths, settings, "reading room scene images", problems))
    if problems:
        raise CatalogImageError(problems)
    room_column = [next(room_payloads) if room.path is not None else None for room in rooms]

    ingested_at = datetime.now(UTC)
    item_bytes = cast(list[bytes], item_payloads)  # no problems: every payload was read
    tables = [
        TableSync(
            "items",
            lake_settings.items_table,
            build_items(items, item_bytes, metadata.products, ingested_at),
            "id",
            ITEM_COMPARE,
            "IKEA catalog items",
        ),
        TableSync(
            "rooms",
            lake_settings.rooms_table,
            build_rooms(rooms, room_column, ingested_at),
            "id",
            ROOM_COMPARE,
            "IKEA room scenes",
        ),
        TableSync(
            "item_rooms",
            lake_settings.item_rooms_table,
            build_item_rooms(items),
            "id",
            PAIR_COMPARE,
            "IKEA items appearing in room scenes",
        ),
    ]
    return sync_tables(
        lake, tables, prune, lake_settings.commit_retries, lake_settings.commit_retry_wait_s
    )
