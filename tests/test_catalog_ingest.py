"""IKEA catalog ingest into real Delta tables, on the real dataset (or a small copy of it)."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from simrec.config import load_settings
from simrec.images import InvalidImageError
from simrec.lake.catalog import PICKLES, CatalogSourceError, ingest_catalog
from simrec.lake.tables import Lakehouse

IKEA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ikea"

TABLES = ("items", "rooms", "item_rooms")
DEFAULTS = load_settings()

# Real product ids chosen for the quirks they show (see the dataset README).
TABLE_KEY_IN_TWO = "590.483.97"  # key images/table/..., file in `chair` and `dining table`
SOFA_KEY = "302.651.12"  # key images/sofa/..., file in `couch`
BED_IN_TWO = "802.538.09"  # key images/bed/..., file in `bed` and `objects` (identical bytes)
BED_IN_TWO_DIFFERENT = "190.265.47"  # in `bed` and `objects` with different bytes
BED_AND_COUCH = "290.486.62"  # key images/bed/..., file in `bed` and `couch`
MIRROR_KEY = "502.523.97"  # key images/mirror/..., file in `objects`
BARE_KEY = "500.210.76"  # key images/500.210.76.jpg, file in `objects`
CLOCKS = ("img46", "img58")  # no products_dict entry; img46.jpeg, img58.JPG (a PNG inside)
SUBSET_IDS = (
    TABLE_KEY_IN_TWO,
    SOFA_KEY,
    BED_IN_TWO,
    BED_IN_TWO_DIFFERENT,
    BED_AND_COUCH,
    MIRROR_KEY,
    BARE_KEY,
    *CLOCKS,
)


@pytest.fixture(scope="module")
def ikea_dir() -> Path:
    if not (IKEA_DIR / "images").is_dir() or not (IKEA_DIR / "text_data").is_dir():
        pytest.skip(f"IKEA dataset not found at {IKEA_DIR} (expected images/ and text_data/)")
    return IKEA_DIR


def _copy_subset(ikea_dir: Path, target: Path, ids: tuple[str, ...] = SUBSET_IDS) -> Path:
    """A small copy of the dataset: all pickles, every copy of `ids`, the rooms they appear in."""
    shutil.copytree(ikea_dir / "text_data", target / "text_data")
    images = ikea_dir / "images"
    for folder in images.iterdir():
        if folder.name == "room_scenes":
            continue
        (target / "images" / folder.name).mkdir(parents=True)
        for path in folder.iterdir():
            if path.stem in ids:
                shutil.copy2(path, target / "images" / folder.name / path.name)
    with open(ikea_dir / "text_data" / "item_to_room.p", "rb") as handle:
        item_to_room = pickle.load(handle, encoding="latin1")
    (target / "images" / "room_scenes").mkdir()
    for key, rooms in item_to_room.items():
        if Path(key).stem in ids:
            for room in rooms:
                if (ikea_dir / room).is_file():
                    shutil.copy2(ikea_dir / room, target / room)
    return target


@pytest.fixture
def subset(ikea_dir: Path, tmp_path: Path) -> Path:
    return _copy_subset(ikea_dir, tmp_path / "ikea")


def _ingest(lake: Lakehouse, source: Path, **kwargs: object) -> dict:
    return ingest_catalog(lake, DEFAULTS.catalog, DEFAULTS.lake, source_dir=source, **kwargs)


def _rows(lake: Lakehouse, table: str, columns: list[str] | None = None) -> list[dict]:
    names = {
        "items": DEFAULTS.lake.items_table,
        "rooms": DEFAULTS.lake.rooms_table,
        "item_rooms": DEFAULTS.lake.item_rooms_table,
    }
    return lake.read(names[table], columns=columns).to_pylist()


def _versions(lake: Lakehouse) -> dict[str, int]:
    settings = DEFAULTS.lake
    names = (settings.items_table, settings.rooms_table, settings.item_rooms_table)
    return {table: lake.version(name) for table, name in zip(TABLES, names, strict=True)}


def _valid_jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (seed % 256, 80, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_sliced_ingest_is_consistent_and_idempotent(ikea_dir: Path, tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path / "lake")
    first = _ingest(lake, ikea_dir, max_items=80)
    assert set(first) == set(TABLES)
    assert first["items"].rows_added == 80

    items = _rows(lake, "items")
    ids = [row["id"] for row in items]
    assert len(ids) == len(set(ids)) == 80
    all_stems = sorted(
        {
            p.stem
            for d in (ikea_dir / "images").iterdir()
            if d.name != "room_scenes"
            for p in d.iterdir()
        }
    )
    assert sorted(ids) == all_stems[:80]  # the deterministic slice: first ids in sorted order
    for row in items:
        assert hashlib.sha256(row["image"]).hexdigest() == row["sha256"]
        assert (ikea_dir / row["source"]).read_bytes() == row["image"]
        assert Path(row["source"]).parent.name == row["folder"]
        assert row["description"] is None or not row["description"].startswith("View more")

    pairs = _rows(lake, "item_rooms")
    rooms = _rows(lake, "rooms")
    assert pairs, "the first 80 items appear in some room scenes"
    assert {pair["item_id"] for pair in pairs} <= set(ids)
    assert {row["id"] for row in rooms} == {pair["room_id"] for pair in pairs}
    assert all(pair["id"] == f"{pair['item_id']}|{pair['room_id']}" for pair in pairs)
    for room in rooms:
        assert room["has_image"] == (room["image"] is not None) == (room["sha256"] is not None)
        assert room["has_image"] == (ikea_dir / room["source"]).is_file()
    assert any(room["has_image"] for room in rooms) and not all(room["has_image"] for room in rooms)

    again = _ingest(lake, ikea_dir, max_items=80)
    assert {t: v.version for t, v in again.items()} == {t: v.version for t, v in first.items()}
    assert all(v.rows_added == 0 for v in again.values())
    assert len(_rows(lake, "items", ["id"])) == 80
    assert len(_rows(lake, "item_rooms", ["id"])) == len(pairs)
    assert len(_rows(lake, "rooms", ["id"])) == len(rooms)

    wider = _ingest(lake, ikea_dir, max_items=90)
    assert wider["items"].version == first["items"].version + 1
    assert wider["items"].rows_added == 10
    assert len(_rows(lake, "items", ["id"])) == 90


def test_quirky_folders_map_to_categories(subset: Path, tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path / "lake")
    _ingest(lake, subset)
    items = {row["id"]: row for row in _rows(lake, "items")}

    assert sorted(items) == sorted(SUBSET_IDS)  # files in two folders are one row each
    expect = {
        TABLE_KEY_IN_TWO: ("table", "dining table"),
        SOFA_KEY: ("sofa", "couch"),
        BED_IN_TWO: ("bed", "bed"),
        BED_IN_TWO_DIFFERENT: ("bed", "bed"),
        BED_AND_COUCH: ("bed", "bed"),
        MIRROR_KEY: ("mirror", "objects"),
        BARE_KEY: ("other", "objects"),
        CLOCKS[0]: ("clock", "clock"),
        CLOCKS[1]: ("clock", "clock"),
    }
    assert {i: (row["category"], row["folder"]) for i, row in items.items()} == expect

    # Of two differing copies, the bytes written are those of the copy in the named folder.
    bed_copy = (subset / "images" / "bed" / f"{BED_IN_TWO_DIFFERENT}.jpg").read_bytes()
    assert items[BED_IN_TWO_DIFFERENT]["image"] == bed_copy
    assert items[BED_IN_TWO_DIFFERENT]["source"] == f"images/bed/{BED_IN_TWO_DIFFERENT}.jpg"

    kura = items[BED_IN_TWO]
    assert (kura["name"], kura["type"], kura["colour"]) == ("KURA", "Reversible bed", "White,pine")
    assert kura["description"] == (
        "Turned upside down the bed quickly converts from a low to a high bed."
    )
    for clock in CLOCKS:  # no products_dict entry: text fields are null
        assert all(items[clock][f] is None for f in ("name", "type", "colour", "description"))

    pairs = _rows(lake, "item_rooms")
    assert {p["item_id"] for p in pairs} <= set(items)
    assert Counter(p["item_id"] for p in pairs)[BED_IN_TWO] == 6
    rooms = {row["id"]: row for row in _rows(lake, "rooms")}
    assert {p["room_id"] for p in pairs} <= set(rooms)
    kura_rooms = [rooms[p["room_id"]] for p in pairs if p["item_id"] == BED_IN_TWO]
    assert sum(room["has_image"] for room in kura_rooms) == 4  # 2 of its 6 rooms have no file
    assert all(room["room_category"] for room in kura_rooms if room["has_image"])


@pytest.mark.parametrize(
    "folder, name, corrupt",
    [
        ("objects", "999.999.01.jpg", "truncated"),
        ("chair", "999.999.01.jpg", "text"),
        ("room_scenes", "ikea-not-really-a-room.jpg", "text"),
    ],
)
def test_corrupt_image_fails_the_batch_and_writes_nothing(
    subset: Path, tmp_path: Path, folder: str, name: str, corrupt: str
) -> None:
    lake = Lakehouse(tmp_path / "lake")
    _ingest(lake, subset)
    before = _versions(lake)

    original = (subset / "images" / "objects" / f"{BARE_KEY}.jpg").read_bytes()
    payload = original[: len(original) // 2] if corrupt == "truncated" else b"not an image\n"
    (subset / "images" / folder / name).write_bytes(payload)
    (subset / "images" / "objects" / "999.999.02.jpg").write_bytes(_valid_jpeg(1))

    with pytest.raises(InvalidImageError, match=name.replace(".", r"\.")):
        _ingest(lake, subset)
    assert _versions(lake) == before
    assert "999.999.02" not in {row["id"] for row in _rows(lake, "items", ["id"])}


def test_appending_a_new_image_adds_exactly_one_item(subset: Path, tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path / "lake")
    first = _ingest(lake, subset)
    (subset / "images" / "chair" / "999.999.03.jpg").write_bytes(_valid_jpeg(3))

    second = _ingest(lake, subset)
    assert second["items"].version == first["items"].version + 1
    assert second["items"].rows_added == 1
    assert second["rooms"].version == first["rooms"].version
    assert second["item_rooms"].version == first["item_rooms"].version
    items = {row["id"]: row for row in _rows(lake, "items")}
    assert len(items) == len(SUBSET_IDS) + 1
    new = items["999.999.03"]
    assert (new["category"], new["folder"], new["name"]) == ("chair", "chair", None)
    versions = [v.version for v in _ingest(lake, subset).values()]
    assert versions == [v.version for v in second.values()]


def test_oversized_image_is_rejected_by_name(subset: Path, tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path / "lake")
    size = (subset / "images" / "couch" / f"{SOFA_KEY}.jpg").stat().st_size
    settings = DEFAULTS.catalog.model_copy(update={"max_image_bytes": size - 1})
    with pytest.raises(InvalidImageError, match=rf"{SOFA_KEY}\.jpg: {size} bytes exceeds"):
        ingest_catalog(lake, settings, DEFAULTS.lake, source_dir=subset)
    assert not any(lake.exists(name) for name in ("catalog_items", "catalog_rooms"))


def test_missing_source_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ikea"
    with pytest.raises(CatalogSourceError, match=str(missing)):
        _ingest(Lakehouse(tmp_path / "lake"), missing)


@pytest.mark.parametrize("pickle_name", sorted(PICKLES.values()))
def test_missing_pickle_names_the_path(subset: Path, tmp_path: Path, pickle_name: str) -> None:
    (subset / "text_data" / pickle_name).unlink()
    lake = Lakehouse(tmp_path / "lake")
    with pytest.raises(FileNotFoundError, match=pickle_name.replace(".", r"\.")):
        _ingest(lake, subset)
    assert not lake.exists(DEFAULTS.lake.items_table)


@pytest.mark.slow
def test_full_ingest_row_counts(ikea_dir: Path, tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path / "lake")
    result = _ingest(lake, ikea_dir)
    assert {t: v.rows_added for t, v in result.items()} == {
        "items": 2294,  # distinct product file stems; 23 of them sit in two folders
        "rooms": 602,  # every room scene named by a pickle or present as a file
        "item_rooms": 5564,  # distinct (item, room) pairs of item_to_room keys that have a file
    }
    items = _rows(lake, "items", ["id", "category", "name"])
    assert Counter(row["category"] for row in items) == {
        "other": 1728,
        "table": 117,
        "clock": 107,
        "chair": 104,
        "mirror": 61,
        "bed": 54,
        "pillow": 51,
        "sofa": 38,
        "plant_pot": 34,
    }
    assert sum(row["name"] is None for row in items) == 107  # files without a products_dict entry
    rooms = _rows(lake, "rooms", ["id", "has_image", "room_category"])
    assert sum(row["has_image"] for row in rooms) == 215
    assert all(row["room_category"] for row in rooms if row["has_image"])
    pairs = _rows(lake, "item_rooms", ["item_id", "room_id"])
    assert {p["item_id"] for p in pairs} <= {row["id"] for row in items}
    assert {p["room_id"] for p in pairs} <= {row["id"] for row in rooms}

    again = _ingest(lake, ikea_dir)
    assert all(v.rows_added == 0 for v in again.values())
    assert {t: v.version for t, v in again.items()} == {t: v.version for t, v in result.items()}
