"""Fetch the IKEA interior-design dataset (IvonaTau/ikea at a pinned commit) into a cache.

`ensure_catalog(settings)` returns a folder holding the dataset: the cached copy when it was
verified before, else it downloads the GitHub archive of the pinned commit
(`catalog.download_url`), with a progress bar, into `catalog.cache_dir`.

- An interrupted download keeps its `.part` file; the next run resumes it with an HTTP Range
  request (or restarts it when the server ignores the range).
- The archive is extracted into a temporary folder beside the cache, every file of the sha256
  manifest shipped with simrec (`lake/data/ikea_manifest.json`, made by
  scripts/make_ikea_manifest.py) is checked, and only then is the folder renamed into place
  (one atomic rename): the cache never holds a half-extracted or unverified copy. A mismatch is
  refused and the archive deleted, so the next run downloads it afresh.
- Licence and citation are logged whenever the data is fetched (the CLI prints them too).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

import platformdirs

from simrec.config import CatalogSettings
from simrec.progress import progress

log = logging.getLogger(__name__)

APP_NAME = "simrec"
MANIFEST_RESOURCE = "data/ikea_manifest.json"
VERIFIED_MARKER = ".simrec-verified"  # inside the cached copy: the manifest digest it matched
CHUNK_BYTES = 1 << 16
LICENCE = (
    "IKEA interior-design dataset (IvonaTau/ikea): all images are property of IKEA.com and "
    "may be used for non-commercial purposes only."
)
CITATION = (
    'Cite: Tautkute et al., "What Looks Good with my Sofa: Multimodal Search Engine for '
    'Interior Design", FedCSIS 2017, doi:10.15439/2017F56.'
)


class CatalogDownloadError(OSError):
    """The dataset could not be downloaded, or what was downloaded does not match the manifest."""


@dataclass(frozen=True)
class Manifest:
    """The files the dataset must contain: relative POSIX path -> sha256."""

    repository: str
    commit: str
    files: dict[str, str]

    @classmethod
    def load(cls, path: Path | None = None) -> Manifest:
        """The manifest at `path`, default the one shipped in the package."""
        if path is None:
            text = resources.files("simrec.lake").joinpath(MANIFEST_RESOURCE).read_text()
        else:
            text = Path(path).read_text()
        data = json.loads(text)
        return cls(data["repository"], data["commit"], dict(data["files"]))

    @property
    def digest(self) -> str:
        listing = json.dumps(self.files, sort_keys=True).encode()
        return hashlib.sha256(listing).hexdigest()


@dataclass(frozen=True)
class CatalogCopy:
    folder: Path
    downloaded: bool  # False: an already verified copy in the cache


def cache_folder(settings: CatalogSettings) -> Path:
    if settings.cache_dir is not None:
        return Path(settings.cache_dir).expanduser()
    return Path(platformdirs.user_cache_dir(APP_NAME))


def _copy_name(manifest: Manifest) -> str:
    return f"ikea-{manifest.commit}"


def is_verified(folder: Path, manifest: Manifest) -> bool:
    marker = folder / VERIFIED_MARKER
    return marker.is_file() and marker.read_text().strip() == manifest.digest


def _response_start(response, offset: int) -> int:
    """Where the body of `response` starts: `offset` for a 206 honouring the range, else 0."""
    if offset and response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        if content_range.startswith(f"bytes {offset}-"):
            return offset
    return 0


def download_archive(url: str, target: Path, timeout_s: float) -> Path:
    """`url` downloaded to `target`, resuming `target.part` when the server allows ranges."""
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            start = _response_start(response, offset)
            if offset and not start:
                log.info("%s ignores ranges: restarting the download", url)
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            with (
                open(partial, "ab" if start else "wb") as handle,
                progress(
                    total=total, initial=start, unit="B", unit_scale=True, desc="IKEA dataset"
                ) as bar,
            ):
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the range is past the end: the partial file is unusable
            partial.unlink(missing_ok=True)
        raise CatalogDownloadError(f"downloading {url} failed: HTTP {error.code}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise CatalogDownloadError(
            f"downloading {url} was interrupted ({error}); {partial} is kept: run the same "
            f"command again to resume"
        ) from error
    got = partial.stat().st_size
    if total is not None and got != total:
        raise CatalogDownloadError(
            f"downloading {url} stopped at {got} of {total} bytes; {partial} is kept: run the "
            f"same command again to resume"
        )
    partial.replace(target)
    return target


def _member_path(name: str) -> str | None:
    """An archive member's path inside the dataset: GitHub's top folder stripped."""
    parts = PurePosixPath(name).parts
    if len(parts) < 2 or any(part in ("..", "") for part in parts) or parts[0].startswith("/"):
        return None
    return PurePosixPath(*parts[1:]).as_posix()


def extract_verified(archive: Path, manifest: Manifest, into: Path) -> None:
    """Extract the manifest's files of `archive` into `into`, checking each one's sha256;
    CatalogDownloadError lists every file that is missing or differs."""
    found: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                relative = _member_path(member.name)
                if relative is None or not member.isfile() or relative not in manifest.files:
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                target = into / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with source, open(target, "wb") as handle:
                    while block := source.read(CHUNK_BYTES):
                        digest.update(block)
                        handle.write(block)
                found[relative] = digest.hexdigest()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise CatalogDownloadError(f"{archive} is not a readable archive ({error})") from error
    problems = [
        f"{path}: {'missing' if path not in found else 'sha256 differs'}"
        for path, expected in sorted(manifest.files.items())
        if found.get(path) != expected
    ]
    if problems:
        listed = "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
        raise CatalogDownloadError(
            f"the downloaded IKEA dataset does not match the manifest of {manifest.repository}@"
            f"{manifest.commit} in {len(problems)} file(s), so it was refused: {listed}"
        )


def ensure_catalog(settings: CatalogSettings, manifest: Manifest | None = None) -> CatalogCopy:
    """A verified copy of the dataset in the cache, downloaded when absent."""
    manifest = manifest or Manifest.load()
    cache = cache_folder(settings)
    folder = cache / _copy_name(manifest)
    if is_verified(folder, manifest):
        return CatalogCopy(folder, downloaded=False)
    cache.mkdir(parents=True, exist_ok=True)
    log.warning("downloading %s into %s. %s %s", settings.download_url, cache, LICENCE, CITATION)
    archive = download_archive(
        settings.download_url, cache / f"{folder.name}.tar.gz", settings.download_timeout_s
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=cache))
    try:
        extract_verified(archive, manifest, staging)
        (staging / VERIFIED_MARKER).write_text(manifest.digest + "\n")
        if folder.exists():  # an unverified leftover (e.g. from an older simrec)
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except CatalogDownloadError:
        archive.unlink(missing_ok=True)  # never verify the same bad bytes twice
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    archive.unlink(missing_ok=True)
    log.info("IKEA dataset verified (%d files) in %s", len(manifest.files), folder)
    return CatalogCopy(folder, downloaded=True)
