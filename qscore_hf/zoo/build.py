"""Build a zoo release into a model folder: download (cached, resumable), verify, convert with
``qscore_hf.convert``, optionally count activation statistics, and write the folder atomically with its card and a
``zoo.json`` record of the release and of what was measured."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .card import release_card
from .download import DEFAULT_MAX_BYTES, cache_root, fetch_release_file
from .registry import Release

__all__ = [
    "ZOO_RECORD",
    "BuildError",
    "build_lock",
    "build_release",
    "build_state",
    "built_folder",
    "parse_stats",
    "read_zoo_record",
]

ZOO_RECORD = "zoo.json"


class BuildError(ValueError):
    """A downloaded release that is not what the registry says (another layout or architecture)."""


def built_folder(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where ``from_pretrained(name)`` and ``zoo build`` without ``--out`` keep the built release."""
    from ..io_utils import contained_path

    return contained_path(Path(cache or cache_root()) / "models", name, what="a zoo release name")


def read_zoo_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``zoo.json`` of a built release folder, or ``None`` when there is none (not built, or not a zoo build)."""
    path = Path(folder) / ZOO_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def build_state(release: Release, folder: str | os.PathLike) -> str:
    """``"yes"`` when ``folder`` holds a build of ``release`` as the registry describes it now, ``"stale"`` when it
    holds a build of another record (a corrected checksum, other preprocessing) or of none, ``"no"`` when nothing is
    built there."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return "no"
    try:
        built = (read_zoo_record(folder) or {}).get("release")
    except (OSError, ValueError, AttributeError):
        built = None
    return "yes" if built == json.loads(json.dumps(release.to_dict())) else "stale"


@contextmanager
def build_lock(folder: str | os.PathLike, cache: str | os.PathLike | None = None, kind: str = "build",
               log: Callable[[str], None] | None = None) -> Iterator[None]:  # fmt: skip
    """Hold the zoo's file lock of ``folder`` (in the cache's ``locks/``): one process builds or downloads it, the
    others wait; a killed holder releases it (the operating system drops its lock)."""
    from filelock import FileLock, Timeout

    from ..io_utils import resolve_target

    target = resolve_target(folder)
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:16]
    locks = Path(cache or cache_root()) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(locks / f"{kind}-{target.name}-{digest}.lock"))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        if log is not None:
            log(f"waiting for another process's {kind} of {target} to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def parse_stats(spec: str) -> tuple[str, str]:
    """``DATASET[:SPLIT]`` -> ``(dataset, split)``; the split defaults to ``validation``. A Windows drive letter or a
    URL scheme is not taken for a split."""
    dataset, sep, split = spec.rpartition(":")
    if not sep or not dataset or "/" in split or "\\" in split or len(dataset) == 1:
        return spec, "validation"
    return dataset, split


def build_release(
    release: Release,
    out: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    mirror: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    stats: str | None = None,
    stats_max_samples: int | None = None,
    repo_id: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    linear_eval: str | None = None,
    linear_eval_max_samples: int | None = None,
    rebuild: bool = True,
) -> Path:
    """Download, verify, convert and save ``release`` as a ``QScoreModel`` folder (``out``, default the cache's
    ``models/<name>``); returns the folder. The folder appears complete or not at all.

    Args:
        stats: ``DATASET[:SPLIT]`` (anything ``qscore_hf.data.load_image_dataset`` resolves) to count activation
            statistics on; without it Q-Scores use all features.
        repo_id: the Hub id named in the card's usage code (default: the release's name).
        log: receives one line per step (the computed SHA-256 where no checksum is published).
        linear_eval: ``DATASET[:SPLIT]``: after the folder is written, a linear probe trained on ``DATASET``'s
            ``train`` split is evaluated on ``SPLIT`` (default ``validation``) with ``qscore_hf.linear_eval``; its
            results go into the card's model-index (measured, beside the published top-1) and ``zoo.json``, the
            full report into ``<out>-linear-eval/``. ``linear_eval_max_samples`` caps each split.
        rebuild: build even when ``out`` already holds a current build (``False``: reuse it, as ``from_pretrained``
            does). Builds of one folder run one at a time (a file lock); a waiting ``rebuild=False`` call reuses what
            the other process built.

    Raises:
        DownloadError, ChecksumMismatchError: see ``fetch_release_file``.
        ConversionError, BuildError: the file is not the release the registry describes.
    """
    from ..io_utils import check_output_folder

    out = Path(out) if out is not None else built_folder(release.name, cache)
    with build_lock(out, cache, log=log):
        if not rebuild and build_state(release, out) == "yes":
            return out  # another process built it while this one waited
        _adopt_earlier_build(out)
        check_output_folder(out)  # before the download: a folder holding what qscore-hf did not write is refused
        return _build(release, out, cache, mirror, max_bytes, stats, stats_max_samples, repo_id, progress, log,
                      linear_eval, linear_eval_max_samples)  # fmt: skip


def _build(release: Release, out: Path, cache: str | os.PathLike | None, mirror: str | None, max_bytes: int,
           stats: str | None, stats_max_samples: int | None, repo_id: str | None, progress: bool,
           log: Callable[[str], None], linear_eval: str | None, linear_eval_max_samples: int | None) -> Path:  # fmt: skip
    from ..convert import ConversionError, ConversionReport, compute_stats, convert_checkpoint
    from ..io_utils import atomic_directory

    path, digests = fetch_release_file(release, cache, mirror, max_bytes, progress)
    if release.checksum:
        log(f"{release.name}: verified {release.checksum} ({release.file_name}, {digests.size} bytes)")
    else:
        log(f"{release.name}: no published checksum; computed SHA-256 {digests.sha256} ({digests.size} bytes)")
    try:
        model = convert_checkpoint(path, method=release.method, pretraining_data=release.data, license=release.license)
    except ConversionError as error:
        if release.checksum is not None and release.checksum.startswith("sha256:") and len(release.checksum) == 71:
            raise  # the very file published: the converter, not the download, is at fault
        path.unlink(missing_ok=True)  # no full checksum: a broken download must not be reused by every later build
        raise ConversionError(f"{release.name}: the downloaded {path} does not convert ({error}); the download was "
                              "deleted: run again to download it anew.") from None  # fmt: skip
    report = ConversionReport.from_config(model.config)
    if report.format != release.layout or model.config.backbone != release.arch:
        raise BuildError(
            f"{release.name}: {release.file_name} is a {model.config.backbone} in layout '{report.format}', but the "
            f"registry describes a {release.arch} in layout '{release.layout}'; the source serves another file."
        )
    _apply_registry(model.config, release)
    measured: dict[str, Any] = {"sha256": digests.sha256, "md5": digests.md5, "size": digests.size}
    if stats:
        dataset, split = parse_stats(stats)
        counted = compute_stats(model, dataset, split=split, max_samples=stats_max_samples, progress=progress)
        discriminative = model.discriminative_features()
        measured["stats"] = {
            "dataset": dataset,
            "split": split,
            "samples": int(counted.num_samples),
            "num_discriminative": model.config.hidden_size if discriminative is None else int(discriminative.numel()),
        }
        log(f"{release.name}: activation statistics from {measured['stats']['samples']} images of {dataset} ({split})")
    card = release_card(release, model.config, measured, repo_id=repo_id)
    with atomic_directory(out, keep_other_files=False) as tmp:
        model.save_pretrained(tmp)
        card.save(tmp / "README.md")
        record = {"release": release.to_dict(), "measured": measured}
        (tmp / ZOO_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log(f"{release.name}: wrote {out}")
    if linear_eval:
        _linear_eval(release, out, linear_eval, linear_eval_max_samples, record, progress, log)
    return out


def _linear_eval(release: Release, folder: Path, spec: str, max_samples: int | None, record: dict[str, Any],
                 progress: bool, log: Callable[[str], None]) -> None:  # fmt: skip
    """Linear-probe the built ``folder`` (see ``build_release``) and record the measured figures."""
    from ..io_utils import atomic_write_text
    from ..linear_eval import run_linear_eval

    dataset, split = parse_stats(spec)
    report = run_linear_eval(folder, dataset, folder.with_name(f"{folder.name}-linear-eval"), eval_split=split,
                             max_samples=max_samples, update_model_card=True, progress=progress)  # fmt: skip
    record["measured"]["linear_eval"] = {
        "dataset": dataset, "train_split": "train", "eval_split": split, "max_samples": max_samples,
        "top1": report["top1"], "auroc": report.get("auroc"), "published_top1": release.top1,
    }  # fmt: skip
    atomic_write_text(folder / ZOO_RECORD, json.dumps(record, indent=2) + "\n")
    log(f"{release.name}: linear-probe top-1 {report['top1']:.4f} on {dataset} ({split}), measured"
        + (f"; published {release.top1} %" if release.top1 is not None else ""))


def _adopt_earlier_build(folder: Path) -> None:
    """A release folder built before report folders listed their files (a ``zoo.json``, no manifest) holding only
    what a build writes is recorded as the build's own, so that a rebuild may replace it."""
    from ..io_utils import OUTPUT_MANIFEST, atomic_write_text
    from ..remote_code import _code_files

    if not (folder / ZOO_RECORD).is_file() or (folder / OUTPUT_MANIFEST).exists():
        return
    built = {ZOO_RECORD, "README.md", "config.json", "model.safetensors", "preprocessor_config.json", *_code_files()}
    names = sorted(os.listdir(folder))
    if set(names) <= built:
        atomic_write_text(folder / OUTPUT_MANIFEST, json.dumps({"files": names}, indent=2) + "\n")


def _apply_registry(config: Any, release: Release) -> None:
    """The registry's evaluation preprocessing and provenance over what the converter inferred from the layout."""
    config.image_mean, config.image_std = list(release.image_mean), list(release.image_std)
    config.image_size, config.crop_pct = release.crop, release.crop_pct
    conversion: dict[str, Any] = dict(config.conversion)
    registry = f"the qscore-hf zoo registry ({release.name})"
    conversion["method_source"] = conversion["pretraining_data_source"] = registry
    conversion["license"] = {
        "id": release.license,
        "source": release.license_source,
        "confirmed": not any(item.startswith("license") for item in release.unverified),
        "note": next((item for item in release.unverified if item.startswith("license")), ""),
    }
    conversion["preprocessing"] = (
        f"resize {release.resize}, centre-crop {release.crop} ({release.preprocessing_source})"
    )
    config.conversion = conversion

