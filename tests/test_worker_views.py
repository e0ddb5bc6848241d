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
# libjpeg decodes at the largest of 1/1, 1/2, 1/4, 1/8 not above floor(file's shortest edge / need), sizes rounded
# up; the PNG is decoded whole.
@pytest.mark.parametrize("method, image_size, local_views, min_edge, decoded_sizes", [
    # 32 / sqrt(0.08) = 113.1. 2400 x 1600: 1600 // 114 = 14, 1/8 gives 200; 1280 x 854: 854 // 114 = 7, 1/4 gives
    # 214; 640 x 427: 3, 1/2 gives 214; 900 x 1200: 7, 1/4; 500 x 333 (odd edges): 2, 1/2 gives 250 x 167
    ("simclr", 32, 0, 114, {(2400, 1600): (300, 200), (1600, 2400): (200, 300), (1280, 854): (320, 214),
                            (640, 427): (320, 214), (500, 333): (250, 167), (900, 1200): (225, 300),
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


def test_crop_parameters_follow_the_recipe(photos):
    """(b) 10,000 samples' crops, each seeded by (seed, epoch, index) as in training, against 10,000 draws of
    torchvision's RandomResizedCrop sampler from one stream: area fraction and aspect ratio within the recipe's
    ranges (up to the rounding of a crop to whole pixels), the same means (within 4 standard errors) and the same
    distributions (two-sample Kolmogorov-Smirnov); the flip in half of the samples."""
    views = worker_views(photos, "simclr", 224)
    index = file_sizes(views).index((2400, 1600))
    image = views.decode(index)  # 1200 x 800: draws are relative to the decoded image
    width, height = image.size
    draws = [views.draw(image, augmentation_seed(0, epoch, sample))[0] for epoch in range(2) for sample in range(5_000)]
    ours = np.array([(p.height * p.width / (width * height), p.width / p.height) for p in draws])
    torch.manual_seed(1234)
    theirs = np.array([(h * w / (width * height), w / h) for _, _, h, w in
                       (T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(10_000))])
    rounding = 2 / 100  # a crop of at least ~200 px a side, rounded to whole pixels
    assert ours[:, 0].min() >= 0.08 * (1 - rounding) and ours[:, 0].max() <= 1.0
    assert ours[:, 1].min() >= 3 / 4 * (1 - rounding) and ours[:, 1].max() <= 4 / 3 * (1 + rounding)
    for column in range(2):
        a, b = ours[:, column], theirs[:, column]
        standard_error = np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * standard_error
        assert scipy.stats.ks_2samp(a, b).pvalue > 1e-3
    flips = np.mean([p.applied[0] for p in draws])
    assert abs(flips - 0.5) < 4 * np.sqrt(0.25 / len(draws))
    assert not any(p.applied[1] or p.applied[2] for p in draws)  # SimCLR's vertical flip and rotation: probability 0


def test_views_equal_torchvisions_ops_on_the_same_image_with_the_same_parameters(photos):
    """(f) Each uint8 view is torchvision's resized crop (and flip) of the image decoded at the same draft scale,
    with the drawn parameters, pixel for pixel; and within one 8-bit level on average of the same crop of the
    full-resolution decode (the reduced decode is an honest downscale)."""
    views = worker_views(photos, "byol", 32)
    index = file_sizes(views).index((2400, 1600))
    global_index = 3 * len(views) + index  # epoch 3
    sample = views[global_index]["views"]
    params = views.draw(views.decode(index), augmentation_seed(0, 3, index))
    path = views.dataset[index][views.image_column]["path"]
    reduced = PIL.Image.open(path)
    reduced.draft("RGB", (300, 200))  # 1/8: the scale the recipe allows (see the test above)
    reduced = reduced.convert("RGB")
    full = PIL.Image.open(path).convert("RGB")
    assert len(sample) == 2 and reduced.size == (300, 200)
    for view, p in zip(sample, params):
        assert view.dtype == torch.uint8 and view.shape == (3, 32, 32)
        expected = F1.resized_crop(reduced, p.top, p.left, p.height, p.width, [32, 32], antialias=True)
        if p.applied[0]:
            expected = F1.hflip(expected)
        assert torch.equal(view, F1.pil_to_tensor(expected))
        # the same crop of the full-resolution image: its box 8 times larger
        box = [8 * p.top, 8 * p.left, 8 * p.height, 8 * p.width]
        expected_full = F1.resized_crop(full, *box, [32, 32], antialias=True)
        if p.applied[0]:
            expected_full = F1.hflip(expected_full)
        difference = (view.float() - F1.pil_to_tensor(expected_full).float()).abs()
        assert difference.mean() < 1.0, float(difference.mean())


def first_batches(views: WorkerViews, num_workers: int, epoch: int) -> list[list[torch.Tensor]]:
    sampler = EpochSampler(len(views), seed=0)
    sampler.set_epoch(epoch)
    loader = DataLoader(views, batch_size=4, sampler=sampler, num_workers=num_workers, collate_fn=_collate_views)
    return list(loader)


def test_batches_depend_on_seed_epoch_and_step_only_not_on_the_workers(photos):
    """(d) The same (seed, epoch, step) gives identical uint8 view batches with 0 and 2 loader workers, and identical
    views after the device's colour work (seeded per step); another epoch gives other views."""
    views = worker_views(photos, "byol", 32)
    colour = batch_views(recipe("byol", 32), geometric=False)
    # the colour ops only (BYOL's first view is never solarized, its second one is; no blur at 32 px)
    assert [[type(op).__name__ for op in view] for view in colour.views] == [
        ["ColorJitter", "RandomGrayscale", "Normalize"],
        ["ColorJitter", "RandomGrayscale", "RandomSolarize", "Normalize"],
    ]
    alone, with_workers = first_batches(views, 0, epoch=1), first_batches(views, 2, epoch=1)
    assert len(alone) == 2 and all(len(batch) == 2 for batch in alone)  # 2 steps of 2 views
    for step, (a, b) in enumerate(zip(alone, with_workers)):
        assert a[0].shape == (4, 3, 32, 32) and a[0].dtype == torch.uint8
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        seed = augmentation_seed(0, 1, step)
        assert all(torch.equal(x, y) for x, y in zip(colour(a, seed), colour(b, seed)))
    other_epoch = first_batches(views, 0, epoch=2)
    assert not torch.equal(alone[0][0], other_epoch[0][0])


def logged_steps(output_dir) -> list[int]:
    lines = (output_dir / "train_log.jsonl").read_text().splitlines()
    return [entry["step"] for entry in map(json.loads, lines) if "loss" in entry]


def test_pretraining_takes_the_worker_path_in_one_line_and_resumes_exactly(photos, tmp_path, monkeypatch, capsys):
    """(a) A data set over the decode-once limit is decoded in the loader workers, said in one line (nothing left
    in the decode cache); (e) a run through that path resumed after step 3 equals an uninterrupted one."""
    monkeypatch.setenv("QSCORE_HF_DECODED_CACHE", str(tmp_path / "decoded"))
    monkeypatch.setattr(decoded, "DEFAULT_MAX_BYTES", 2**20)  # 8 images of 2400 x 1600 take 88 MiB decoded

    def run(output, **overrides):
        settings = dict(method="simclr", output_dir=str(tmp_path / output), dataset=str(photos), backbone="resnet10t",
                        image_size=32, batch_size=4, epochs=2, checkpoint_every=2, num_workers=0, log_with="none",
                        progress=False, log_every=1, eval_split=None, seed=3)  # fmt: skip
        return pretrain(PretrainConfig(**{**settings, **overrides}))

    straight = run("straight")  # the default pipeline, auto, takes the tensor pipeline's worker path too
    announced = [line for line in capsys.readouterr().out.splitlines() if "data pipeline" in line]
    # 8 x 3 x 1600 x 2400 bytes = 87.9 MiB
    assert announced == ["data pipeline: tensor, images decoded in the loader workers (8 images of 1600x2400 take "
                         "87.9 MiB decoded, over the 1.0 MiB limit of the decode-once array)"]  # fmt: skip
    assert not [entry for entry in (tmp_path / "decoded").iterdir() if not entry.name.startswith(".")]
    assert run("resumed", stop_after_steps=3, data_pipeline="tensor") is None
    resumed = run("resumed", resume="auto", data_pipeline="tensor")
    assert logged_steps(tmp_path / "straight") == logged_steps(tmp_path / "resumed") == [1, 2, 3, 4]
    expected, weights = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == weights.keys()
    for key in expected:
        assert torch.equal(expected[key], weights[key]), key


def test_multi_crop_views_of_two_sizes_come_as_one_batch_per_view(photos):
    """SwAV's two global and two local views: one uint8 batch per view at the recipe's sizes, each normalized by
    its colour ops on the device."""
    transform = recipe("swav", 32, local_views=2)
    sizes = [tuple(view.transforms[0].size) for view in transform.transforms]
    views = WorkerViews(load_image_dataset(str(photos), "train"), transform, partial(augmentation_seed, 0))
    (batch, _) = first_batches(views, 0, epoch=0)
    assert [tuple(view.shape) for view in batch] == [(4, 3, *size) for size in sizes] and len(set(sizes)) == 2
    coloured = batch_views(transform, geometric=False)(batch, seed=7)
    assert [tuple(view.shape) for view in coloured] == [(4, 3, *size) for size in sizes]
    assert all(view.dtype == torch.float32 and view.min() < 0 for view in coloured)  # normalized around 0.5


def test_an_image_that_does_not_decode_is_named_in_one_line(tmp_path):
    """A truncated JPEG among real ones: the worker refuses it naming its row and file, not with PIL's traceback."""
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    photo = PIL.Image.fromarray(load_sample_images().images[0])
    photo.save(folder / "0.jpg")
    (folder / "1.jpg").write_bytes((folder / "0.jpg").read_bytes()[:300])
    views = worker_views(tmp_path)
    assert views[0]["views"][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"cannot read the image in row 1 of data set '.*' \(.*1\.jpg\): .*Replace or "
                                         r"delete that file\.$"):  # fmt: skip
        views[1]
