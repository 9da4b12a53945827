"""The IKEA dataset download, against a real HTTP server on 127.0.0.1 serving an archive built
in the test: verified success, a corrupted file refused, an interrupted download resumed (or
restarted when the server ignores ranges), never a half-extracted copy in the cache."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simrec.cli import app
from simrec.config import load_settings
from simrec.lake.ikea_download import (
    VERIFIED_MARKER,
    CatalogDownloadError,
    Manifest,
    ensure_catalog,
)
from simrec.lake.tables import Lakehouse

IKEA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ikea"
TOP = "ikea-6f316e3a1b2c"  # GitHub names the archive's top folder <repo>-<full sha>

FILES = {
    "README.md": b"# Interior Design Dataset - IKEA\n",
    "images/bed/001.024.52.jpg": bytes(range(256)) * 40,
    "images/dining table/590.483.97.jpg": b"\xff\xd8" + b"table" * 3000,
    "text_data/item_to_room.p": b"pickle bytes",
}


def _archive(files: dict[str, bytes], top: str = TOP, extra: dict[str, bytes] | None = None):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in {**files, **(extra or {})}.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _manifest(files: dict[str, bytes]) -> Manifest:
    return Manifest(
        "IvonaTau/ikea",
        "6f316e3",
        {name: hashlib.sha256(payload).hexdigest() for name, payload in files.items()},
    )


class _Server:
    """Serves `payload` at /archive.tar.gz; `drop_after` cuts the first response short;
    `honour_ranges` False answers every Range request with the whole file (200)."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.drop_after: int | None = None
        self.honour_ranges = True
        self.chunked = False  # as GitHub's codeload sends archives: no Content-Length
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", requested or "")
                if match and server.honour_ranges:
                    start = int(match.group(1))
                    self.send_response(206)
                    total = len(server.payload)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                else:
                    self.send_response(200)
                body = server.payload[start:]
                if server.chunked:
                    self.protocol_version = "HTTP/1.1"
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    cut = server.drop_after
                    server.drop_after = None
                    # one chunk announced whole, cut short when dropping
                    self.wfile.write(f"{len(body):x}\r\n".encode())
                    self.wfile.write(body[:cut] if cut is not None else body)
                    if cut is None:
                        self.wfile.write(b"\r\n0\r\n\r\n")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_after is not None:
                    self.wfile.write(body[: server.drop_after])
                    server.drop_after = None
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/archive.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _settings(url: str, cache: Path):
    return load_settings(
        overrides={
            "catalog.download_url": url,
            "catalog.cache_dir": str(cache),
            "catalog.download_timeout_s": "10",
        }
    ).catalog


def _cache_entries(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir()) if cache.exists() else []


def test_download_is_verified_extracted_and_cached(tmp_path: Path, caplog) -> None:
    manifest = _manifest(FILES)
    extra = {"notebooks/style_search.ipynb": b"{}"}  # in the repository, not in the manifest
    with _Server(_archive(FILES, extra=extra)) as server:
        settings = _settings(server.url, tmp_path / "cache")
        with caplog.at_level("WARNING"):
            copy = ensure_catalog(settings, manifest)
        assert copy.downloaded
        assert "non-commercial" in caplog.text and "doi:10.15439/2017F56" in caplog.text
        for name, payload in FILES.items():
            assert (copy.folder / name).read_bytes() == payload
        assert not (copy.folder / "notebooks").exists()
        assert (copy.folder / VERIFIED_MARKER).read_text().strip() == manifest.digest
        assert _cache_entries(tmp_path / "cache") == [copy.folder.name]  # no archive, no temp
        again = ensure_catalog(settings, manifest)
        assert (again.folder, again.downloaded) == (copy.folder, False)
        assert len(server.ranges) == 1  # the verified copy is reused: no second request


def test_a_corrupted_file_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    manifest = _manifest(FILES)
    tampered = {**FILES, "images/bed/001.024.52.jpg": b"not the photo"}
    with _Server(_archive(tampered)) as server:
        settings = _settings(server.url, tmp_path / "cache")
        with pytest.raises(CatalogDownloadError, match=r"refused.*001\.024\.52\.jpg: sha256"):
            ensure_catalog(settings, manifest)
        assert _cache_entries(tmp_path / "cache") == []  # no copy, no temp folder, no archive
        server.payload = _archive(FILES)  # the next run downloads afresh
        assert ensure_catalog(settings, manifest).downloaded


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    manifest = _manifest(FILES)
    partial = {name: payload for name, payload in FILES.items() if "dining" not in name}
    with (
        _Server(_archive(partial)) as server,
        pytest.raises(CatalogDownloadError, match=r"590\.483\.97\.jpg: missing"),
    ):
        ensure_catalog(_settings(server.url, tmp_path / "cache"), manifest)
    assert _cache_entries(tmp_path / "cache") == []


@pytest.mark.parametrize("honour_ranges", [True, False], ids=["resumed", "restarted"])
def test_an_interrupted_download_is_resumed_or_restarted(
    tmp_path: Path, honour_ranges: bool
) -> None:
    manifest = _manifest(FILES)
    payload = _archive(FILES)
    with _Server(payload) as server:
        server.drop_after = len(payload) // 3
        settings = _settings(server.url, tmp_path / "cache")
        with pytest.raises(CatalogDownloadError, match="run the same command again to resume"):
            ensure_catalog(settings, manifest)
        cache = tmp_path / "cache"
        assert _cache_entries(cache) == [f"ikea-{manifest.commit}.tar.gz.part"]  # no extraction
        assert (cache / f"ikea-{manifest.commit}.tar.gz.part").stat().st_size == len(payload) // 3
        server.honour_ranges = honour_ranges
        copy = ensure_catalog(settings, manifest)
        assert server.ranges == [None, f"bytes={len(payload) // 3}-"]
        for name, content in FILES.items():
            assert (copy.folder / name).read_bytes() == content
        assert _cache_entries(cache) == [copy.folder.name]


def test_an_interrupted_chunked_download_is_restarted(tmp_path: Path) -> None:
    manifest = _manifest(FILES)
    payload = _archive(FILES)
    with _Server(payload) as server:
        server.chunked, server.honour_ranges = True, False
        server.drop_after = len(payload) // 2
        settings = _settings(server.url, tmp_path / "cache")
        with pytest.raises(CatalogDownloadError, match="interrupted"):
            ensure_catalog(settings, manifest)
        assert not any(
            name.startswith("ikea-6f316e3") and "." not in name.removeprefix("ikea-6f316e3")
            for name in _cache_entries(tmp_path / "cache")
        )  # never extracted
        copy = ensure_catalog(settings, manifest)
        for name, content in FILES.items():
            assert (copy.folder / name).read_bytes() == content


@pytest.mark.skipif(not (IKEA_DIR / "images").is_dir(), reason="IKEA dataset not available")
def test_cli_downloads_with_the_shipped_manifest_then_ingests(tmp_path: Path) -> None:
    """The real dataset, packed as GitHub packs it, checked against the shipped manifest."""
    archive = tmp_path / "ikea.tar"
    with tarfile.open(archive, "w") as tar:  # uncompressed: quick to build for 100 MB
        tar.add(IKEA_DIR, arcname=TOP)
    with _Server(archive.read_bytes()) as server:
        lake = tmp_path / "lake"
        result = CliRunner().invoke(
            app,
            [
                "ingest",
                "catalog",
                "--max-items",
                "3",
                "--set",
                f"lake.root={lake}",
                "--set",
                f"catalog.download_url={server.url}",
                "--set",
                f"catalog.cache_dir={tmp_path / 'cache'}",
            ],
        )
    assert result.exit_code == 0, result.output
    assert "(downloaded)" in result.output and "non-commercial" in result.output
    assert "catalog_items: version 0, 3 inserted, 0 updated, 0 deleted" in result.output
    assert Lakehouse(lake).read("catalog_items", columns=["id"]).num_rows == 3
    assert Manifest.load().files  # the shipped manifest is package data
