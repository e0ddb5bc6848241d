"""Pre-training's tensor pipeline for images too many to decode once (qscore_hf.worker_views): each image decoded in
the loader workers at a reduced size (JPEG draft mode) no smaller than the recipe needs, its views cropped and flipped
there by torchvision into uint8 batches, their colours done on the device by kornia. On real photographs
(scikit-learn's two sample JPEGs, re-encoded at sizes up to 2400 x 1600)."""

# Defaults switched off in this file, and why: progress bars off (progress=False): they only fill the test log; no
# tracker (log_with "none"): nobody reads the event files here; loader workers (num_workers 0) except in the test
# that compares 0 and 2: a worker process costs seconds to start on 2 cores.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json
from functools import partial

import numpy as np
import PIL.Image
import pytest
import scipy.stats
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F1
from safetensors.torch import load_file
from sklearn.datasets import load_sample_images
from torch.utils.data import DataLoader

from qscore_hf import decoded
from qscore_hf.batch_views import batch_views
from qscore_hf.data import load_image_dataset
from qscore_hf.pretraining import EpochSampler, PretrainConfig, _collate_views, augmentation_seed, pretrain
from qscore_hf.ssl import METHODS, TransformSettings
from qscore_hf.worker_views import WorkerViews

pytestmark = [pytest.mark.runs_long, pytest.mark.usefixtures("one_thread")]

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# (width, height) of each file, in file-name order; the two photos alternate. The last one is a PNG.
SIZES = [(2400, 1600), (1600, 2400), (1280, 854), (640, 427), (500, 333), (900, 1200), (2000, 1500), (300, 200)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """An imagefolder of 8 real photographs of various large sizes (7 JPEGs, 1 PNG), in two classes."""
    root = tmp_path_factory.mktemp("photos")
    sources = load_sample_images().images
    for position, (width, height) in enumerate(SIZES):
        image = PIL.Image.fromarray(sources[position % 2]).resize((width, height), PIL.Image.Resampling.BICUBIC)
        folder = root / "train" / ("china" if position % 2 == 0 else "flower")
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "png" if position == len(SIZES) - 1 else "jpg"
        image.save(folder / f"{position}.{suffix}", **({"quality": 90} if suffix == "jpg" else {}))
    return root


def recipe(method: str = "simclr", image_size: int = 32, local_views: int = 0):
    return METHODS[method].build_transform(TransformSettings(image_size, MEAN, STD, local_views))


def worker_views(photos, method: str = "simclr", image_size: int = 32, local_views: int = 0, seed: int = 0):
    data = load_image_dataset(str(photos), "train")
    return WorkerViews(data, recipe(method, image_size, local_views), partial(augmentation_seed, seed))


def file_sizes(views: WorkerViews) -> list[tuple[int, int]]:
    return [PIL.Image.open(views.dataset[index][views.image_column]["path"]).size for index in range(len(views))]


# (c) hand-computed: the shortest edge the recipe needs is max view size / sqrt(smallest crop scale), rounded up;
# libjpeg decodes at the smallest of 1/1, 1/2, 1/4, 1/8 whose edges are still at least the file's divided by
# floor(file's shortest edge / need) (sizes rounded up); the PNG is decoded whole.
@pytest.mark.parametrize("method, image_size, local_views, min_edge, decoded_sizes", [
    # 32 / sqrt(0.08) = 113.1. 2400 x 1600: 1600 // 114 = 14, 1/8 gives 200; 1280 x 854: 854 // 114 = 7, 1/8 would
    # give 107 < 854 / 7, 1/4 gives 214; 640 x 427: 3, 1/4 would give 107 < 143, 1/2 gives 214; 900 x 1200: 7, 1/4.
    # 500 x 333: 2, but bounded_decode asks for ceil(333 / 2) = 167 rows and 333 // 167 = 1: PIL decodes it whole
    ("simclr", 32, 0, 114, {(2400, 1600): (300, 200), (1600, 2400): (200, 300), (1280, 854): (320, 214),
                            (640, 427): (320, 214), (500, 333): (500, 333), (900, 1200): (225, 300),
                            (2000, 1500): (250, 188), (300, 200): (300, 200)}),
    # 224 / sqrt(0.08) = 791.96: only the two files with a shortest edge of 1600 are halved (1500 // 792 = 1)
    ("simclr", 224, 0, 792, {(2400, 1600): (1200, 800), (1600, 2400): (800, 1200), (1280, 854): (1280, 854),
                             (640, 427): (640, 427), (500, 333): (500, 333), (900, 1200): (900, 1200),
                             (2000, 1500): (2000, 1500), (300, 200): (300, 200)}),
    # SwAV's multi-crop: 224 / sqrt(0.14) = 598.7 needed by the global views, over 96 / sqrt(0.05) = 429.3
    ("swav", 224, 2, 599, {(2400, 1600): (1200, 800), (1600, 2400): (800, 1200), (1280, 854): (1280, 854),
                           (640, 427): (640, 427), (500, 333): (500, 333), (900, 1200): (900, 1200),
                           (2000, 1500): (1000, 750), (300, 200): (300, 200)}),
])  # fmt: skip
def test_images_are_decoded_at_the_smallest_size_the_recipe_allows(photos, method, image_size, local_views, min_edge,
                                                                   decoded_sizes):
    views = worker_views(photos, method, image_size, local_views)
    assert views.min_edge == min_edge
    sizes = file_sizes(views)
    assert sorted(sizes) == sorted(SIZES)
    for index, size in enumerate(sizes):
        decoded_size = views.decode(index).size
        assert decoded_size == decoded_sizes[size], size
        assert min(decoded_size) >= min(min_edge, min(size))  # never below the need, unless the file is smaller
