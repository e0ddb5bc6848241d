"""The tensor pipeline's views (qscore_hf.batch_views, kornia) against the recipe's torchvision/lightly transforms:
(a) deterministic ops give the same pixels within 1/255 on real CIFAR-10 images; (b) each random op draws its
parameters from the same distribution (10,000 draws, a two-sample Kolmogorov-Smirnov test against torchvision's own
sampler, ranges, and probabilities within 4 standard errors of the recipe's)."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import scipy.stats
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F

from cifar10_subset import cifar10_rows
from qscore_hf.batch_views import batch_views
from qscore_hf.ssl import METHODS, TransformSettings

DRAWS = 10_000
ONE_LEVEL = 1 / 255 + 1e-6  # one 8-bit level (PIL rounds its result to 8 bits), plus float rounding
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
FOUR_METHODS = ["simclr", "moco", "byol", "simsiam"]


@pytest.fixture(scope="module")
def cifar_images() -> list[PIL.Image.Image]:
    return [PIL.Image.open(io.BytesIO(row["bytes"])).convert("RGB") for row in cifar10_rows(0, 64).column("img").to_pylist()]


def as_batch(images: list[PIL.Image.Image]) -> torch.Tensor:
    """PIL images as one float batch in [0, 1], as the tensor pipeline feeds its ops."""
    return torch.stack([torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) for image in images]).float() / 255


def pil_batch(images: list[PIL.Image.Image]) -> torch.Tensor:
    return as_batch(images)


def recipe(method: str, image_size: int = 32, local_views: int = 0):
    return METHODS[method].build_transform(TransformSettings(image_size, MEAN, STD, local_views))


def ops_of(method: str, image_size: int = 32, view: int = 0) -> tuple[list, list]:
    """(torchvision/lightly ops, kornia ops) of one view of a method's recipe, by class name."""
    from qscore_hf.batch_views import view_ops

    transform = recipe(method, image_size)
    return view_ops(transform.transforms[view]), list(batch_views(transform).views[view])


def kornia_op(method: str, name: str, view: int = 0, image_size: int = 32):
    """The kornia op of that class, or of a subclass of it (``BatchedResizedCrop`` is kornia's ``RandomResizedCrop``)."""
    (op,) = [op for op in ops_of(method, image_size, view)[1] if name in {c.__name__ for c in type(op).__mro__}]
    return op


def torchvision_op(method: str, name: str, view: int = 0, image_size: int = 32):
    ops = ops_of(method, image_size, view)[0]
    if name == "ColorJitter":
        (apply,) = [op for op in ops if type(op).__name__ == "RandomApply"]
        return apply.transforms[0], apply.p
    (op,) = [op for op in ops if type(op).__name__ == name]
    return op


# ----------------------------------------------------------------------------------------- (a) deterministic ops
def test_the_recipes_translate_to_the_expected_kornia_ops():
    names = [type(op).__name__ for op in batch_views(recipe("byol")).views[1]]
    assert names == ["BatchedResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale", "RandomSolarize",
                     "Normalize"]  # fmt: skip
    big = [type(op).__name__ for op in batch_views(recipe("byol", 224)).views[0]]
    assert "RandomGaussianBlur" in big  # solo-learn drops blur at 32 px only
    assert [len(views.views) for views in [batch_views(recipe("dino", 32, 2))]] == [4]


def test_flip_crop_resize_grayscale_solarize_normalize_equal_torchvision_on_cifar10(cifar_images):
    x = as_batch(cifar_images)
    n = len(cifar_images)
    flip = kornia_op("simclr", "RandomHorizontalFlip")
    flipped = flip(x, params={**flip.forward_parameters(x.shape), "batch_prob": torch.ones(n, dtype=torch.bool)})
    torch.testing.assert_close(flipped, pil_batch([F.horizontal_flip(image) for image in cifar_images]), atol=0, rtol=0)

    crop = kornia_op("simclr", "RandomResizedCrop")  # a 20 x 26 box at (left 5, top 3) resized to 32 x 32
    left, top, width, height = 5, 3, 20, 26
    box = torch.tensor([[left, top], [left + width - 1, top], [left + width - 1, top + height - 1], [left, top + height - 1]])
    params = {**crop.forward_parameters(x.shape), "src": box.float().expand(n, 4, 2).clone()}
    expected = [F.resized_crop(image, top, left, height, width, [32, 32], T.InterpolationMode.BILINEAR, antialias=True)
                for image in cifar_images]  # fmt: skip
    assert float((crop(x, params=params) - pil_batch(expected)).abs().max()) <= ONE_LEVEL

    gray = kornia_op("simclr", "RandomGrayscale")
    grayed = gray(x, params={**gray.forward_parameters(x.shape), "batch_prob": torch.ones(n, dtype=torch.bool)})
    expected = pil_batch([F.rgb_to_grayscale(image, num_output_channels=3) for image in cifar_images])
    assert float((grayed - expected).abs().max()) <= ONE_LEVEL

    solarize = kornia_op("byol", "RandomSolarize", view=1)
    solarized = solarize(x, params={**solarize.forward_parameters(x.shape), "batch_prob": torch.ones(n, dtype=torch.bool)})
    expected = pil_batch([PIL.ImageOps.solarize(image, threshold=torchvision_op("byol", "RandomSolarization", 1).threshold)
                          for image in cifar_images])  # fmt: skip
    assert float((solarized - expected).abs().max()) <= ONE_LEVEL

    normalize = kornia_op("simclr", "Normalize")
    expected = torch.stack([torchvision_op("simclr", "Normalize")(F.to_dtype(F.to_image(image), torch.float32, scale=True))
                            for image in cifar_images])  # fmt: skip
    torch.testing.assert_close(normalize(x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("image_size, view_size, scale", [
    (32, 32, (0.08, 1.0)),  # the CIFAR recipes: mostly upscaling
    (32, 16, (0.05, 0.14)),  # multi-crop's small views
    (96, 32, (0.05, 1.0)),  # downscaling (no antialiasing, as kornia's slice mode)
])  # fmt: skip
def test_the_batched_crop_equals_kornias_slice_mode_on_cifar10(cifar_images, image_size, view_size, scale):
    """One grid_sample for the batch gives kornia's own per-image slice-and-interpolate pixels, boxes touching the
    image's edges and boxes exactly the view's size (copied, not resampled) included."""
    import kornia.augmentation as K

    from qscore_hf.batch_views import BatchedResizedCrop

    x = torch.nn.functional.interpolate(as_batch(cifar_images), size=image_size, mode="bilinear", antialias=True)
    torch.manual_seed(0)
    ours = BatchedResizedCrop((view_size, view_size), scale=scale, align_corners=False)
    kornias = K.RandomResizedCrop((view_size, view_size), scale=scale, align_corners=False, cropping_mode="slice")
    params = kornias.forward_parameters(x.shape)
    exact = torch.tensor([[0, 0], [view_size - 1, 0], [view_size - 1, view_size - 1], [0, view_size - 1]])
    params["src"][:4] = exact + torch.tensor([[image_size - view_size, 0], [0, image_size - view_size], [0, 0],
                                              [image_size - view_size] * 2])[:, None]  # fmt: skip
    expected = kornias(x, params=params)
    assert float((ours(x, params=params) - expected).abs().max()) <= 1e-4  # float rounding of the sample positions
    torch.testing.assert_close(ours(x, params=params)[:4], expected[:4], atol=1e-6, rtol=0)


def test_the_hue_shift_equals_kornias_and_torchvisions_on_cifar10(cifar_images):
    """``shift_hue`` (kornia's hue hook in our ColorJitter) against ``kornia.enhance.adjust_hue`` and torchvision's
    float ``adjust_hue``, on real images plus grey pixels and exact ties between channels, over the whole turn."""
    import math

    from kornia.enhance import adjust_hue

    from qscore_hf.batch_views import shift_hue

    x = as_batch(cifar_images)
    x[:4] = x[:4, :1].expand(-1, 3, -1, -1)  # grey: hue undefined, value kept
    x[4:8, 1] = x[4:8, 0]  # red == green: torchvision takes red's formula
    x[8:12, 2] = x[8:12, 1]  # green == blue
    turns = torch.linspace(-0.5, 0.5, len(x))
    ours = shift_hue(x, turns * 2 * math.pi)
    torch.testing.assert_close(ours, adjust_hue(x, turns * 2 * math.pi), atol=1e-5, rtol=0)
    reference = torch.stack([F.adjust_hue(image, float(turn)) for image, turn in zip(x, turns)])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[:4], x[:4], atol=1e-6, rtol=0)


@pytest.mark.parametrize("prop, factor, adjust", [
    ("brightness", 1.3, F.adjust_brightness), ("contrast", 0.7, F.adjust_contrast),
    ("saturation", 1.35, F.adjust_saturation), ("hue", 0.08, F.adjust_hue),
])  # fmt: skip
def test_each_colour_jitter_op_at_a_fixed_factor_equals_torchvision_on_cifar10(cifar_images, prop, factor, adjust):
    x = as_batch(cifar_images)
    n = len(cifar_images)
    jitter = kornia_op("simclr", "ColorJitter")
    neutral = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
    params = jitter.forward_parameters(x.shape)
    for key, value in {**neutral, prop: factor}.items():
        params[f"{key}_factor"] = torch.full((n,), value)
    params.update(order=torch.arange(4), batch_prob=torch.ones(n, dtype=torch.bool))
    ours = jitter(x, params=params)
    # torchvision's float implementation of the same op (its tensor path): the same pixels
    assert float((ours - adjust(x, factor)).abs().max()) <= ONE_LEVEL
    # its PIL path (today's pipeline) rounds to 8 bits: the result (and, for contrast, the grey mean; for saturation,
    # the grey image) once more; hue goes through PIL's 8-bit HSV, hence a few levels on saturated pixels, less than
    # one on average
    difference = (ours - pil_batch([adjust(image, factor) for image in cifar_images])).abs()
    if prop == "hue":
        assert float(difference.mean()) <= ONE_LEVEL and float(difference.max()) <= 16 / 255
    else:
        assert float(difference.max()) <= (1 if prop == "brightness" else 2) * ONE_LEVEL


# --------------------------------------------------------------------------------- (b) parameter distributions
def ks_same(ours, theirs, low: float | None = None, high: float | None = None) -> None:
    """Our draws and the reference's: the same mean (4 standard errors), a two-sample KS test, within the recipe's
    range [low, high] when given."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if low is not None:
        assert ours.min() >= low - 1e-6 and ours.max() <= high + 1e-6, (ours.min(), ours.max(), low, high)
    assert abs(ours.mean() - theirs.mean()) <= 4 * np.sqrt(ours.var() / len(ours) + theirs.var() / len(theirs))
    assert scipy.stats.ks_2samp(ours, theirs).pvalue > 1e-3


def probability_is(applied: torch.Tensor, p: float) -> None:
    rate = float(applied.float().mean())
    assert abs(rate - p) <= 4 * np.sqrt(p * (1 - p) / len(applied)) + 1e-9, (rate, p)


@pytest.mark.parametrize("method", FOUR_METHODS)
def test_random_crops_draw_torchvisions_boxes(method):
    torch.manual_seed(0)
    crop, reference = kornia_op(method, "RandomResizedCrop"), torchvision_op(method, "RandomResizedCrop")
    src = crop.forward_parameters(torch.Size((DRAWS, 3, 32, 32)))["src"].double()  # ratios of pixel counts: in float64
    width, height, left, top = src[:, 1, 0] - src[:, 0, 0] + 1, src[:, 2, 1] - src[:, 0, 1] + 1, src[:, 0, 0], src[:, 0, 1]
    boxes = [reference.make_params([torch.zeros(3, 32, 32)]) for _ in range(DRAWS)]
    ref = {key: torch.tensor([box[key] for box in boxes], dtype=torch.float64) for key in ("width", "height", "left", "top")}
    ks_same(width * height / 1024, ref["width"] * ref["height"] / 1024)
    ks_same(width / height, ref["width"] / ref["height"])
    ks_same(left, ref["left"])
    ks_same(top, ref["top"])
    assert float((width * height / 1024).min()) >= reference.scale[0] - 0.02  # scale's range, up to rounding to pixels


@pytest.mark.parametrize("method", FOUR_METHODS)
def test_colour_jitter_draws_torchvisions_factors_with_the_recipes_probability(method):
    torch.manual_seed(0)
    jitter = kornia_op(method, "ColorJitter", view=1)
    reference, p = torchvision_op(method, "ColorJitter", view=1)
    params = jitter.forward_parameters(torch.Size((DRAWS, 3, 32, 32)))
    draws = [reference.make_params([torch.zeros(3, 32, 32)]) for _ in range(DRAWS)]
    for prop in ("brightness", "contrast", "saturation", "hue"):
        ks_same(params[f"{prop}_factor"], [draw[f"{prop}_factor"] for draw in draws], *getattr(reference, prop))
    probability_is(params["batch_prob"], p)
    # every one of the 24 orders of the four ops is drawn (one per batch: here many batches of one image)
    orders = {tuple(jitter.forward_parameters(torch.Size((1, 3, 32, 32)))["order"].tolist()) for _ in range(2000)}
    assert len(orders) == 24


@pytest.mark.parametrize("method, view", [("simclr", 0), ("byol", 0), ("byol", 1), ("moco", 0), ("simsiam", 0)])
def test_flip_grayscale_solarize_and_blur_happen_with_the_recipes_probabilities(method, view):
    torch.manual_seed(0)
    shape = torch.Size((DRAWS, 3, 32, 32))
    probability_is(kornia_op(method, "RandomHorizontalFlip", view).forward_parameters(shape)["batch_prob"],
                   torchvision_op(method, "RandomHorizontalFlip", view).p)  # fmt: skip
    probability_is(kornia_op(method, "RandomGrayscale", view).forward_parameters(shape)["batch_prob"],
                   torchvision_op(method, "RandomGrayscale", view).p)  # fmt: skip
    solarization = torchvision_op(method, "RandomSolarization", view) if method == "byol" else None
    solarizers = [op for op in ops_of(method, 32, view)[1] if type(op).__name__ == "RandomSolarize"]
    assert len(solarizers) == (1 if solarization is not None and solarization.prob > 0 else 0)
    for solarize in solarizers:
        params = solarize.forward_parameters(shape)
        probability_is(params["batch_prob"], solarization.prob)
        assert torch.all(params["thresholds"] == 0.5) and torch.all(params["additions"] == 0)  # PIL's 128, exactly


@pytest.mark.parametrize("view", [0, 1])
def test_blur_at_imagenet_size_draws_lightlys_sigmas_with_its_probability(view):
    torch.manual_seed(0)
    blur = kornia_op("byol", "RandomGaussianBlur", view, image_size=224)
    reference = torchvision_op("byol", "GaussianBlur", view, image_size=224)
    params = blur.forward_parameters(torch.Size((DRAWS, 3, 224, 224)))
    probability_is(params["batch_prob"], reference.prob)
    lightly_sigmas = np.random.default_rng(0).uniform(*reference.sigmas, size=DRAWS)  # lightly's np.random.uniform
    applied = params["batch_prob"].bool()
    ks_same(params["sigma"][applied], lightly_sigmas, *reference.sigmas)


# ---------------------------------------------------------------------------------------- seeding and refusals
def test_views_are_a_function_of_the_seed_alone(cifar_images):
    views = batch_views(recipe("byol"))
    images = (as_batch(cifar_images) * 255).round().to(torch.uint8)
    torch.manual_seed(123)
    first = views(images, seed=7)
    torch.rand(5)  # the global stream moves on; the views do not depend on it
    again = views(images, seed=7)
    other = views(images, seed=8)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(first[0], other[0])
    assert [tuple(view.shape) for view in first] == [(64, 3, 32, 32)] * 2


def test_an_op_without_translation_is_refused_in_one_line():
    transform = recipe("simclr")
    transform.transforms[0].transform.transforms.insert(1, T.RandomInvert(p=0.3))
    with pytest.raises(ValueError, match="no translation of RandomInvert; use --data-pipeline pil"):
        batch_views(transform)
