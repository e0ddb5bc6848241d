"""Tests of SPEC §7 interpretability (qscore_hf.explain and ``qscore-hf explain``).

Expectations are independent of the code under test: hand-computed masks and IoUs, heatmaps recomputed one sample at a
time with ``torch.autograd.grad`` (and Grad-CAM as the pooled channel's activation map), and synthetic images with a
bright patch planted at a known place on a dark noise background. The models have random weights; their
normalization is the identity (mean 0, std 1) so that the dark background stays near 0 at the input, where a random
ReLU network passes little gradient, while the patch drives the strongest features.
"""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from qscore_hf import QScoreConfig, QScoreModel, cli
from qscore_hf.data import load_image_dataset
from qscore_hf.explain import align_masks, binarize_top, explain_dataset, feature_heatmaps, iou, select_top_features
from qscore_hf.image_processing_qscore import QScoreImageProcessor

SIZE = 32
PATCH = 8
EPS = 2.0  # random encoders rarely have features 4 sigma above their mean; 2 gives every sample selected features


# Tiny CPU workloads run faster (and steadier on a shared machine) without intra-op threads.
pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(backbone: str = "resnet10t", image_size: int = SIZE, crop_pct: float = 1.0) -> QScoreModel:
    torch.manual_seed(0)
    config = QScoreConfig(backbone=backbone, image_size=image_size, crop_pct=crop_pct, qscore_eps=EPS,
                          image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))  # fmt: skip
    return QScoreModel(config).eval()


def planted(count: int, seed: int, size: int = SIZE, margin: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` uint8 RGB images (dark noise, one bright PATCH x PATCH square), the patch masks and a same-size
    'spurious' mask of each image that does not touch its patch. Squares lie at least ``margin`` px from the border."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 26, size=(count, size, size, 3), dtype=np.uint8)
    core = np.zeros((count, size, size), dtype=bool)
    spurious = np.zeros_like(core)
    low, high = margin, size - margin - PATCH + 1
    for k in range(count):
        row, col = rng.integers(low, high, size=2)
        images[k, row : row + PATCH, col : col + PATCH] = rng.integers(204, 256, size=(PATCH, PATCH, 3))
        core[k, row : row + PATCH, col : col + PATCH] = True
        while True:  # a random square that neither overlaps nor touches the patch
            other = rng.integers(low, high, size=2)
            if abs(other[0] - row) > PATCH or abs(other[1] - col) > PATCH:
                break
        spurious[k, other[0] : other[0] + PATCH, other[1] : other[1] + PATCH] = True
    return images, core, spurious


def hand_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def random_squares(count: int, rng: np.random.Generator) -> np.ndarray:
    masks = np.zeros((count, SIZE, SIZE), dtype=bool)
    for k, (row, col) in enumerate(rng.integers(0, SIZE - PATCH + 1, size=(count, 2))):
        masks[k, row : row + PATCH, col : col + PATCH] = True
    return masks


# ------------------------------------------------------------------------------------------ binarize and IoU
def test_binarize_top_keeps_exactly_the_top_fraction_of_pixels():
    heatmap = torch.tensor([[0.1, 0.9, 0.3, 0.0, 0.5],
                            [0.2, 0.8, 0.7, 0.6, 0.4]])  # fmt: skip
    expected_top2 = torch.tensor([[0, 1, 0, 0, 0],
                                  [0, 1, 0, 0, 0]], dtype=torch.bool)  # fmt: skip
    expected_top3 = expected_top2.clone()
    expected_top3[1, 2] = True  # 0.9, 0.8, then 0.7
    assert torch.equal(binarize_top(heatmap, 0.2), expected_top2)  # 0.2 * 10 = 2 pixels
    assert torch.equal(binarize_top(heatmap, 0.25), expected_top3)  # 2.5 pixels round to 3
    only_max = torch.zeros_like(expected_top2)
    only_max[0, 1] = True
    assert torch.equal(binarize_top(heatmap, 0.01), only_max)  # 0.1 pixel: still one
    batch = torch.stack([heatmap, heatmap.flip(-1)])
    result = binarize_top(batch, 0.2)
    assert result.shape == (2, 2, 5)
    assert torch.equal(result[0], expected_top2) and torch.equal(result[1], expected_top2.flip(-1))
    with pytest.raises(ValueError, match="fraction"):
        binarize_top(heatmap, 0.0)


def test_iou_of_hand_made_masks():
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, dtype=torch.bool)
    a[0:2, 0:2] = True  # 4 pixels
    b[1:3, 0:2] = True  # 4 pixels, 2 shared: union 6
    assert iou(a, b).item() == pytest.approx(2 / 6)
    assert iou(a, a).item() == 1.0
    assert iou(a, ~a).item() == 0.0
    batch = iou(torch.stack([a, a]), torch.stack([b, torch.zeros_like(b)]))
    assert batch.tolist() == pytest.approx([2 / 6, 0.0])
    assert torch.isnan(iou(torch.zeros_like(a), torch.zeros_like(b))).item()
    with pytest.raises(ValueError, match="same shape"):
        iou(a, b[:3])


# --------------------------------------------------------------------------------------- feature selection
def test_top_features_come_from_highly_activating_and_discriminative_features():
    features = torch.zeros(2, 20)
    features[0, :3] = torch.tensor([10.0, 9.0, 8.0])  # mu 1.35, sigma 3.29: threshold at eps 2 is 7.93 -> L = {0, 1, 2}
    features[1, 5] = 10.0  # mu 0.5, sigma 2.18: threshold 4.86 -> L = {5}
    indices, valid = select_top_features(features, discriminative=torch.tensor([0, 2, 5, 7]), eps=2.0, top_k=3)
    assert indices[0, :2].tolist() == [0, 2] and valid[0].tolist() == [True, True, False]
    assert indices[1, 0].item() == 5 and valid[1].tolist() == [True, False, False]
    indices, valid = select_top_features(features, eps=2.0, top_k=3)  # D = all features
    assert indices[0].tolist() == [0, 1, 2] and valid[0].all()


# ---------------------------------------------------------------------------------- heatmaps vs references
def hand_selection(model: QScoreModel, pixels: torch.Tensor, excluded: set[int] = frozenset()) -> torch.Tensor:
    """The largest feature of each sample among those above mu + EPS * sigma (population std), minus ``excluded``."""
    with torch.no_grad():
        h = model.backbone(pixels)
    mu = h.mean(dim=1, keepdim=True)
    sigma = ((h - mu) ** 2).mean(dim=1, keepdim=True).sqrt()
    allowed = h > mu + EPS * sigma
    allowed[:, sorted(excluded)] = False
    assert allowed.any(dim=1).all(), "test precondition: every sample has a selectable feature"
    return h.masked_fill(~allowed, -np.inf).argmax(dim=1)


def gradient_reference(model: QScoreModel, pixels: torch.Tensor, feature: int) -> torch.Tensor:
    """|d h_feature / d x| of ONE image, max over channels, divided by its max."""
    x = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.backbone(x[None])[0, feature], x)
    saliency = grad.abs().amax(dim=0)
    return saliency / saliency.max()


def test_gradient_heatmap_equals_a_per_sample_autograd_reference_and_uses_d():
    model = make_model()
    images, _, _ = planted(4, seed=1)
    pixels = model.image_processor()(list(images), return_tensors="pt")["pixel_values"]
    first = hand_selection(model, pixels)
    # Statistics in which the first choices are never active (A_j = 0, so not in D) and every other feature is: D is
    # all features but those, and each sample's top feature becomes its best remaining one.
    model.activation_stats.counts.fill_(1)
    model.activation_stats.counts[first] = 0
    model.activation_stats.num_samples.fill_(1)
    second = hand_selection(model, pixels, excluded=set(first.tolist()))
    heatmaps = feature_heatmaps(model, pixels, top_k=1)
    assert heatmaps.shape == (4, SIZE, SIZE)
    for k in range(4):
        expected = gradient_reference(model, pixels[k], int(second[k]))
        torch.testing.assert_close(heatmaps[k], expected, atol=1e-5, rtol=1e-4)


def hand_top_k(model: QScoreModel, image: torch.Tensor, k: int) -> list[int]:
    """The k largest highly activating features of one image (all features discriminative)."""
    with torch.no_grad():
        h = model.backbone(image[None])[0]
    mu, sigma = h.mean(), ((h - h.mean()) ** 2).mean().sqrt()
    allowed = h > mu + EPS * sigma
    assert int(allowed.sum()) >= k, "test precondition: enough highly activating features"
    return h.masked_fill(~allowed, -np.inf).topk(k).indices.tolist()


def test_mean_of_two_feature_heatmaps_is_renormalized():
    model = make_model()
    images, _, _ = planted(2, seed=2)
    pixels = model.image_processor()(list(images), return_tensors="pt")["pixel_values"]
    heatmaps = feature_heatmaps(model, pixels, top_k=2, combine="mean")
    for k in range(2):
        first, second = hand_top_k(model, pixels[k], 2)
        both = gradient_reference(model, pixels[k], first) + gradient_reference(model, pixels[k], second)
        torch.testing.assert_close(heatmaps[k], both / both.max(), atol=1e-5, rtol=1e-4)


def test_gradcam_of_a_pooled_feature_is_its_channel_activation_map():
    model = make_model("resnet18_cifar", image_size=16)
    pixels = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    top = hand_selection(model, pixels)
    heatmaps = feature_heatmaps(model, pixels, top_k=1, method="gradcam")
    with torch.no_grad():
        stage = model.backbone.forward_features(pixels)  # (3, 512, 2, 2) before global average pooling
    for k in range(3):
        channel = stage[k, int(top[k])].clamp(min=0)[None, None]
        expected = torch.nn.functional.interpolate(channel, size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
        torch.testing.assert_close(heatmaps[k], expected / expected.max(), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- planted patch
def localization(heatmaps: torch.Tensor, core: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean IoU of the top-10% regions with the patches, mean IoU with 20 random same-size squares per image, and
    the fraction of images whose patch IoU beats their random-square IoU."""
    regions = binarize_top(heatmaps, 0.1).numpy()
    rng = np.random.default_rng(seed)
    patch = np.array([hand_iou(region, mask) for region, mask in zip(regions, core)])
    chance = np.array([np.mean([hand_iou(region, square) for square in random_squares(20, rng)]) for region in regions])
    return float(patch.mean()), float(chance.mean()), float((patch > chance).mean())


def test_heatmaps_overlap_the_planted_patch_more_than_random_regions():
    model = make_model()
    images, core, _ = planted(16, seed=4)
    pixels = model.image_processor()(list(images), return_tensors="pt")["pixel_values"]
    patch, chance, wins = localization(feature_heatmaps(model, pixels), core)
    assert patch > 1.5 * chance and wins >= 0.75, (patch, chance, wins)
    # The criterion can fail: heatmaps of uniform noise do not pass it.
    noise = torch.rand(16, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    noise_patch, noise_chance, noise_wins = localization(noise, core)
    assert not (noise_patch > 1.5 * noise_chance and noise_wins >= 0.75)


# --------------------------------------------------------------------------------------------------- masks
def test_masks_follow_the_processors_resize_and_centre_crop():
    processor = QScoreImageProcessor.from_model_config(QScoreConfig(image_size=32, crop_pct=0.8))  # resize 40, crop 32
    image_40 = np.zeros((40, 40, 3), dtype=np.uint8)
    image_80 = Image.new("RGB", (80, 80))
    mask_40 = np.zeros((40, 40), dtype=np.uint8)
    mask_40[10:20, 20:30] = 1  # crop offset 4: rows 6..15, cols 16..25
    mask_80 = np.zeros((80, 80), dtype=bool)
    mask_80[20:40, 40:60] = True  # nearest resize by 1/2 -> rows 10..19, cols 20..29 -> the same after the crop
    mask_half = Image.fromarray(np.where(mask_80[::2, ::2], 255, 0).astype(np.uint8))  # 40 px mask of the 80 px image
    aligned = align_masks(processor, [mask_40, mask_80, mask_half], [image_40, image_80, image_80])
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[6:16, 16:26] = True
    assert aligned.shape == (3, 32, 32)
    for k in range(3):
        assert torch.equal(aligned[k], expected), k


# ------------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def patch_dataset(tmp_path):
    """12 planted-patch images of 40 px (the model crops the central 32 px) with core = patch, spurious = a disjoint
    square, a label and a 0/1 'correct' column, saved with ``save_to_disk``."""
    images, core, spurious = planted(12, seed=5, size=40, margin=4)
    pil = lambda array: Image.fromarray(np.where(array, 255, 0).astype(np.uint8))  # noqa: E731
    features = datasets.Features({
        "image": datasets.Image(), "core": datasets.Image(), "spurious": datasets.Image(),
        "label": datasets.ClassLabel(names=["a", "b"]), "correct": datasets.Value("int64"),
    })  # fmt: skip
    data = datasets.Dataset.from_dict({
        "image": [Image.fromarray(image) for image in images], "core": [pil(mask) for mask in core],
        "spurious": [pil(mask) for mask in spurious], "label": [k % 2 for k in range(12)],
        "correct": [int(k % 3 != 0) for k in range(12)],
    }, features=features)  # fmt: skip
    path = tmp_path / "data"
    data.save_to_disk(str(path))
    return path, images


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "model"
    make_model(crop_pct=0.8).save_pretrained(path)
    return path


def run_cli(model_dir, data_dir, out, *extra: str) -> int:
    return cli.main(["explain", "--model", str(model_dir), "--dataset", str(data_dir), "--out", str(out),
                     "--mask-columns", "core,spurious", "--max-images", "4", "--batch-size", "8", *extra])  # fmt: skip


def test_cli_writes_overlays_json_and_per_sample_table(tmp_path, model_dir, patch_dataset, capsys):
    data_dir, images = patch_dataset
    out = tmp_path / "explain"
    assert run_cli(model_dir, data_dir, out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "explain", "model"]  # no temporary folder left
    pngs = sorted((out / "images").iterdir())
    assert [p.name for p in pngs] == [f"row_{k:06d}.png" for k in range(4)]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    report = json.loads((out / "explain.json").read_text())
    table = pq.read_table(out / "per_sample.parquet").to_pydict()
    assert report["method"] == "gradient" and report["top_k"] == 5 and report["top_fraction"] == 0.1
    assert report["mask_columns"] == {"core": "core", "spurious": "spurious"} and report["correct_column"] == "correct"
    assert report["files"]["images"] == [f"images/{p.name}" for p in pngs]
    assert table["row_id"] == list(range(12)) and table["label"] == [k % 2 for k in range(12)]
    assert table["correct"] == [k % 3 != 0 for k in range(12)]
    assert all(n > 0 for n in table["num_selected"])
    assert all(1 <= len(f) <= 5 and len(f) == min(5, n) for f, n in zip(table["top_features"], table["num_selected"]))
    # Q-Scores are the model's own scores of the processed images.
    model = QScoreModel.from_pretrained(model_dir)
    pixels = model.image_processor()([Image.fromarray(image) for image in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        np.testing.assert_allclose(table["q_score"], model(pixels).q_scores.numpy(), rtol=1e-5)
    correct = np.array(table["correct"])
    for kind in ("iou_core", "iou_spurious"):
        values = np.array(table[kind])
        assert ((values >= 0) & (values <= 1)).all()
        for group, members in (("all", np.ones(12, bool)), ("correct", correct), ("misclassified", ~correct)):
            assert 0.0 <= report["means"][group][kind] <= 1.0
            assert report["means"][group][kind] == pytest.approx(values[members].mean())
    assert report["means"]["correct"]["num_samples"] == 8 and report["means"]["misclassified"]["num_samples"] == 4
    assert report["means"]["all"]["iou_core"] > 1.5 * report["means"]["all"]["iou_spurious"]
    assert "wrote" in capsys.readouterr().out


def test_cli_gradcam_is_named_in_the_outputs(tmp_path, patch_dataset):
    data_dir, _ = patch_dataset
    model_dir = tmp_path / "cifar_model"
    make_model("resnet18_cifar", crop_pct=0.8).save_pretrained(model_dir)
    out = tmp_path / "gradcam"
    assert run_cli(model_dir, data_dir, out, "--method", "gradcam", "--top-k", "2", "--max-samples", "4") == 0
    report = json.loads((out / "explain.json").read_text())
    assert report["method"] == "gradcam" and "Grad-CAM" in report["method_description"]
    assert report["num_samples"] == 4 and len(list((out / "images").iterdir())) == 4


def test_unknown_mask_column_is_a_clear_error(tmp_path, model_dir, patch_dataset, capsys):
    data_dir, _ = patch_dataset
    image_dataset = load_image_dataset(str(data_dir))
    with pytest.raises(ValueError, match="'nope'.*columns are"):
        explain_dataset(make_model(), image_dataset, mask_columns=["core", "nope"], progress=False)
    out = tmp_path / "never"
    code = cli.main(["explain", "--model", str(model_dir), "--dataset", str(data_dir), "--mask-columns", "core,nope",
                     "--out", str(out)])  # fmt: skip
    assert code == 1 and "'nope'" in capsys.readouterr().err and not out.exists()
