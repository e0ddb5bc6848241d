"""Download a release file into the zoo's cache: resumable, capped in size, with a progress bar, from the official
URL or a mirror that holds files under their URL paths, and verified against the registry's checksum.

Written by hand rather than with ``pooch`` (weighed, not adopted): pooch streams into a random temporary file that it
deletes on any failure (no resuming a cut download), has no size cap, and compares full digests only, while MoCo's
README and OML publish md5 *prefixes*. What would remain of it (a cache path and a digest comparison) is a few lines.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..io_utils import atomic_write_text, contained_path
from .registry import Release

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MAX_BYTES",
    "MIRROR_ENV",
    "ChecksumMismatchError",
    "DownloadError",
    "Digests",
    "cache_root",
    "download",
    "fetch_release_file",
    "file_digests",
    "source_url",
]

CACHE_ENV = "QSCORE_HF_ZOO_CACHE"
MIRROR_ENV = "QSCORE_HF_ZOO_MIRROR"
DEFAULT_MAX_BYTES = 2 * 2**30  # the largest release (DINO ViT-B/8 or MoCo v3 ViT-B with its heads) is far below
_CHUNK = 2**20
_TIMEOUT_S = 60
# A server must send at least _MIN_RATE bytes a second over every _RATE_WINDOW_S seconds; the per-read timeout alone
# never ends a server that drips a byte a minute.
_MIN_RATE = 16 * 2**10
_RATE_WINDOW_S = 60.0
_MiB = 2**20


class DownloadError(OSError):
    """A download that failed; the message is one line naming the release and what to do."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file whose digest differs from the registry's (the file has been deleted)."""


@dataclass(frozen=True)
class Digests:
    """A file's size and digests."""

    size: int
    md5: str
    sha256: str

    def matches(self, checksum: str) -> bool:
        """Whether ``checksum`` (``md5:HEX`` or ``sha256:HEX``, full or a prefix) fits these digests."""
        algorithm, _, expected = checksum.partition(":")
        return getattr(self, algorithm).startswith(expected.lower())


def cache_root() -> Path:
    """The zoo's cache: ``$QSCORE_HF_ZOO_CACHE``, else ``$HF_HOME/qscore_hf/zoo`` (downloads/ and models/)."""
    from huggingface_hub import constants

    return Path(os.environ.get(CACHE_ENV) or Path(constants.HF_HOME) / "qscore_hf" / "zoo")


def source_url(release: Release, mirror: str | None = None) -> str:
    """The URL to fetch: ``mirror`` (or ``$QSCORE_HF_ZOO_MIRROR``) followed by the file's URL path, else the
    official URL."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{release.url_path}" if mirror else release.url


def file_digests(path: str | os.PathLike) -> Digests:
    """Size, md5 and SHA-256 of a file in one read."""
    md5, sha256, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return Digests(size, md5.hexdigest(), sha256.hexdigest())


def fetch_release_file(
    release: Release,
    cache: str | os.PathLike | None = None,
    mirror: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: bool = True,
    retries: int = 2,
) -> tuple[Path, Digests]:
    """The release's file in the cache (downloaded, or resumed, when absent) and its digests, verified.

    Raises:
        ChecksumMismatchError: the file's digest is not the registry's; the file is deleted.
        DownloadError: unreachable, HTTP error, an HTML page instead of the file, larger than ``max_bytes`` or than
            the published size, or cut more than ``retries`` times (the partial file is kept to resume from).
    """
    path = contained_path(Path(cache or cache_root()) / "downloads", *release.url_path.split("/"),
                          what=f"{release.name}: the download path")  # fmt: skip
    if not path.is_file():
        from .build import build_lock

        with build_lock(path, cache, kind="download"):  # one process downloads into the .part file, the others wait
            if not path.is_file():
                url = source_url(release, mirror)
                limit = min(max_bytes, release.size) if release.size else max_bytes
                download(url, path, max_bytes=limit, label=release.name, progress=progress, retries=retries)
    digests = file_digests(path)
    problem = None
    if release.size is not None and digests.size != release.size:
        problem = f"{digests.size} bytes where {release.size} are published"
    elif release.checksum and not digests.matches(release.checksum):
        algorithm = release.checksum.partition(":")[0]
        problem = f"{algorithm} {getattr(digests, algorithm)} where the registry has {release.checksum}"
    if problem:
        path.unlink()
        raise ChecksumMismatchError(
            f"{release.name}: {release.file_name} failed verification ({problem}, from "
            f"{release.checksum_source or 'the registry'}); the file was deleted. Run again to download it anew; if it "
            "fails again, the source or the mirror serves another file."
        )
    return path, digests


def download(
    url: str,
    path: str | os.PathLike,
    max_bytes: int = DEFAULT_MAX_BYTES,
    label: str | None = None,
    progress: bool = True,
    retries: int = 2,
) -> Path:
    """Download ``url`` to ``path`` through ``<path>.part``, resuming that partial file with an HTTP range request
    where one is left (from a cut connection or a killed process); ``path`` appears only when complete.

    A partial file is resumed only as a part of the same file: the request carries ``If-Range`` with the validator
    (``ETag``, else ``Last-Modified``) the first response gave, recorded in ``<path>.part.json``, and the server's
    ``Content-Range`` must continue at the partial file's end of a file of the recorded size; anything else starts
    over. A body shorter than its announced length is a cut, never a complete file. A server sending less than
    ``_MIN_RATE`` bytes a second over any ``_RATE_WINDOW_S`` seconds (dripping) is cut too."""
    path = Path(path)
    label = label or path.name
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            _download_once(url, part, max_bytes, label, progress)
            break
        except _Cut as cut:
            if attempt == retries:
                raise DownloadError(
                    f"{label}: the download of {url} was cut at {cut.have / _MiB:.1f} of {cut.total / _MiB:.1f} MiB "
                    f"({cut.reason}); run again to resume from {part}."
                ) from None
    os.replace(part, path)
    _state_file(part).unlink(missing_ok=True)
    return path


class _Cut(Exception):
    def __init__(self, have: int, total: int, reason: str):
        super().__init__(reason)
        self.have, self.total, self.reason = have, total, reason


def _state_file(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_state(part: Path, url: str) -> dict | None:
    """What the first response said of the file a partial download belongs to, or ``None`` when unknown."""
    try:
        state = json.loads(_state_file(part).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("url") != url or not isinstance(state.get("total"), int):
        return None
    return state


def _start_over(part: Path) -> None:
    part.unlink(missing_ok=True)
    _state_file(part).unlink(missing_ok=True)


def _download_once(url: str, part: Path, max_bytes: int, label: str, progress: bool) -> None:
    """One request, appending to ``part`` from its current size; raises ``_Cut`` when the body ends early."""
    from tqdm.auto import tqdm

    state = _read_state(part, url) if part.exists() else None
    if part.exists() and state is None:  # a partial file of unknown origin (an earlier version, another URL)
        _start_over(part)
    have = part.stat().st_size if part.exists() else 0
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        if state.get("validator"):
            headers["If-Range"] = state["validator"]
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is not a prefix of this file: start over
            _start_over(part)
            raise _Cut(0, 0, "the partial file does not fit the server's file; starting over") from None
        raise DownloadError(
            f"{label}: {url} answered HTTP {error.code} {error.reason}; check the URL or the mirror."
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"{label}: cannot reach {url} ({reason}); check the network, or use --mirror.") from None
    with response:
        if "text/html" in (response.headers.get("Content-Type") or ""):
            raise DownloadError(f"{label}: {url} answered with an HTML page, not the file; fetch it by hand into a "
                                "mirror and use --mirror.")  # fmt: skip
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        if resumed:
            match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", (response.headers.get("Content-Range") or "").strip())
            if not match or int(match.group(1)) != have or int(match.group(3)) != state["total"]:
                _start_over(part)  # another range, or a file of another size: the partial file is not its prefix
                raise _Cut(0, 0, "the server's file changed since the partial download; starting over")
            total = int(match.group(3))
        else:
            have = 0
            total = int(length) if length is not None and length.isdigit() else None
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            if validator and validator.startswith("W/"):  # a weak ETag cannot validate a byte range
                validator = response.headers.get("Last-Modified")
            if total is not None:
                atomic_write_text(_state_file(part), json.dumps({"url": url, "total": total, "validator": validator}))
            else:
                _state_file(part).unlink(missing_ok=True)  # unknown size: never resumed
        if total is not None and total > max_bytes:
            _start_over(part)
            raise DownloadError(f"{label}: {url} is {total / _MiB:.1f} MiB, over the size cap of "
                                f"{max_bytes / _MiB:.1f} MiB (--max-size); nothing was kept.")  # fmt: skip
        with open(part, "ab" if resumed else "wb") as file, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress,
            leave=False,
        ) as bar:  # fmt: skip
            size = have
            window_start, window_size = time.monotonic(), size
            while True:
                try:
                    chunk = response.read1(_CHUNK)  # what has arrived: the rate is checked between reads
                except (OSError, ValueError, http.client.HTTPException) as error:  # reset, incomplete read
                    raise _Cut(size, total or size, str(error) or type(error).__name__) from None
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    file.close()
                    _start_over(part)
                    raise DownloadError(f"{label}: {url} sends more than the size cap of {max_bytes / _MiB:.1f} MiB "
                                        "(--max-size); nothing was kept.")  # fmt: skip
                file.write(chunk)
                bar.update(len(chunk))
                elapsed = time.monotonic() - window_start
                if elapsed >= _RATE_WINDOW_S:
                    if (size - window_size) / elapsed < _MIN_RATE:
                        raise _Cut(size, total or size, f"the server sent {(size - window_size) / elapsed / 1024:.1f} "
                                   f"KiB/s over {elapsed:.0f} s, under the minimum of {_MIN_RATE / 1024:.0f} KiB/s")
                    window_start, window_size = time.monotonic(), size
        if total is not None and size < total:
            raise _Cut(size, total, f"the connection closed after {size} of the {total} bytes announced")
        if total is None:
            _state_file(part).unlink(missing_ok=True)
