"""Decode once (qscore_hf.decoded) on real CIFAR-10 images: the array is the images, built once, atomically, never
reused for a changed data set, never read half-written."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import fcntl
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import pytest

from cifar10_subset import cifar10_rows, write_cifar10_subset
from qscore_hf import decoded
from qscore_hf.data import load_image_dataset
from qscore_hf.decoded import decode_images, decoded_cache_key

ROOT = Path(__file__).resolve().parents[1]


def pil_pixels(data, row: int) -> np.ndarray:
    """The reference: PIL's decoding of one row, as C x H x W uint8."""
    return np.asarray(data.dataset[row][data.image_column].convert("RGB")).transpose(2, 0, 1)


@pytest.fixture
def subset(tmp_path):
    return load_image_dataset(str(write_cifar10_subset(tmp_path / "cifar", count=300)), "train")


def test_the_array_holds_the_images_and_labels_and_is_built_once(subset, tmp_path, monkeypatch):
    first = decode_images(subset, cache_dir=tmp_path / "cache", progress=False)
    assert not first.from_cache and first.images.shape == (300, 3, 32, 32) and first.images.dtype == np.uint8
    assert isinstance(first.images, np.memmap)
    for row in (0, 1, 137, 299):
        np.testing.assert_array_equal(first.images[row], pil_pixels(subset, row))
    assert first.labels.tolist() == subset.dataset["label"]
    assert first.row_ids.tolist() == list(range(300))
    monkeypatch.setattr(decoded, "_build", lambda *args: pytest.fail("decoded a second time"))
    again = decode_images(subset, cache_dir=tmp_path / "cache", progress=False)
    assert again.from_cache and again.folder == first.folder
    np.testing.assert_array_equal(again.images, first.images)


def test_a_changed_data_set_is_decoded_again_not_read_from_the_old_array(tmp_path):
    folder = write_cifar10_subset(tmp_path / "cifar", start=0, count=200)
    before = load_image_dataset(str(folder), "train")
    old = decode_images(before, cache_dir=tmp_path / "cache", progress=False)
    write_cifar10_subset(folder, start=200, count=200)  # same path and size, other images
    after = load_image_dataset(str(folder), "train")
    assert decoded_cache_key(after) != decoded_cache_key(before)
    new = decode_images(after, cache_dir=tmp_path / "cache", progress=False)
    assert not new.from_cache
    np.testing.assert_array_equal(new.images[5], pil_pixels(after, 5))
    assert not np.array_equal(new.images[5], old.images[5])
    # fewer rows of the same files (a slice) are another data set too
    sliced = load_image_dataset(str(folder), "train", max_samples=100)
    assert decode_images(sliced, cache_dir=tmp_path / "cache", progress=False).images.shape[0] == 100


_SLOW_BUILD = """
import sys, time
from pathlib import Path
from qscore_hf import decoded, features
from qscore_hf.data import load_image_dataset
real = features._decode
def slow(decoder, value, calls=[0]):
    calls[0] += 1
    if calls[0] == 50:
        Path(sys.argv[3]).write_text("half way")
    time.sleep(0.02)
    return real(decoder, value)
decoded._decode = slow
decoded.decode_images(load_image_dataset(sys.argv[1], "train"), cache_dir=sys.argv[2], progress=False)
"""


def test_a_build_killed_half_way_leaves_nothing_to_read_and_is_rebuilt(subset, tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "half-way"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    builder = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(tmp_path / "cifar"), str(cache), str(marker)],
                               env=env)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists() and builder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the builder never got half way"
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    key = decoded_cache_key(subset)
    assert not (cache / key).exists()  # only the hidden temporary folder of the dead process
    assert any(entry.name.startswith(f".{key}.tmp-") for entry in cache.iterdir())
    rebuilt = decode_images(subset, cache_dir=cache, progress=False)
    assert not rebuilt.from_cache and rebuilt.images.shape == (300, 3, 32, 32)
    np.testing.assert_array_equal(rebuilt.images[299], pil_pixels(subset, 299))
    assert not any(".tmp-" in entry.name for entry in cache.iterdir())  # the dead build's folder was swept


def test_an_array_being_written_is_waited_for_or_refused(subset, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    lock = open(cache / f".{decoded_cache_key(subset)}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # another writer holds it
    with pytest.raises(TimeoutError, match="another process is decoding these images"):
        decode_images(subset, cache_dir=cache, progress=False, wait_s=0.3)
    threading.Timer(0.5, lambda: fcntl.flock(lock, fcntl.LOCK_UN)).start()
    waited = decode_images(subset, cache_dir=cache, progress=False, wait_s=30)
    np.testing.assert_array_equal(waited.images[3], pil_pixels(subset, 3))
    lock.close()


def test_unreadable_images_are_skipped_and_named_and_other_sizes_resized(tmp_path, capsys):
    table = cifar10_rows(0, 20)
    images = table.column("img").to_pylist()
    images[4] = {"bytes": b"not an image", "path": "broken.png"}
    big = io.BytesIO()
    PIL.Image.new("RGB", (48, 40), (200, 10, 30)).save(big, format="PNG")
    images[9] = {"bytes": big.getvalue(), "path": "big.png"}
    table = table.set_column(0, "img", pa.array(images, type=table.schema.field("img").type))
    data = load_image_dataset(str(write_cifar10_subset(tmp_path / "odd", table=table)), "train")
    out = decode_images(data, cache_dir=tmp_path / "cache", progress=False)
    printed = capsys.readouterr().out
    assert "row 4" in printed and "broken.png" in printed
    assert "1 of 20 images" in printed and "resized" in printed
    assert out.images.shape == (19, 3, 32, 32) and out.row_ids.tolist() == [r for r in range(20) if r != 4]
    assert [image.row_id for image in out.skipped] == [4]
    assert out.labels.tolist() == [label for r, label in enumerate(data.dataset["label"]) if r != 4]
    np.testing.assert_array_equal(out.images[9], pil_pixels(data, 10))  # rows after the skipped one shift by one
    np.testing.assert_array_equal(out.images[8][:, 0, 0], [200, 10, 30])  # the 48x40 image, resized to 32x32
    assert decode_images(data, cache_dir=tmp_path / "cache", progress=False).skipped[0].path == "broken.png"
