"""The tensor pipeline for images too large to decode once: decoded and cropped in the loader workers, coloured on
the device.

Pre-training's tensor pipeline keeps a data set's decoded images in one array (``qscore_hf.decoded``) when it fits;
an ImageNet-sized data set does not (1.28 M images of 224 x 224 take 193 GB). ``WorkerViews`` then decodes each image
in the DataLoader's workers (``--num-workers``), as the per-image pipeline does, but

- at the smallest size the recipe allows: a JPEG through PIL's draft mode (1/2, 1/4 or 1/8 of its size), its shortest
  edge still at least the largest view size divided by the square root of the smallest crop scale (SimCLR's 224 px
  views of crops down to 8 % of the image: 792 px), so that no crop is enlarged by the reduced decode
  (``ViewGeometry.min_edge``); never larger than the file;
- with only the geometric ops of each view done there (random resized crop with the recipe's scale and ratio ranges
  and output size, flips, lightly's rotation), by torchvision's functions on the PIL image: one uint8 3 x S x S tensor
  per view, collated into one uint8 batch per view.

The colour work of each view (jitter, grayscale, blur, solarization, normalization) is done on the batch, on the
device, by the kornia translation of the same recipe without its geometric ops (``batch_views(transform,
geometric=False)``). Each sample's geometry is drawn from (seed, epoch, index) as ``AugmentedViews``'s views are, each
batch's colours from (seed, epoch, step) as the decode-once path's: the views depend neither on the number of workers
nor on where a run was resumed.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import PIL.Image
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .batch_views import GEOMETRIC_OPS, view_ops
from .data import ImageDataset
from .data_pipelines import TensorPipelineRefused
from .features import _decode, without_decoding

__all__ = ["ViewGeometry", "ViewParams", "WorkerViews", "seeded"]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU, Python's and NumPy's global random streams seeded with ``seed`` (torchvision
    and lightly draw from those on CPU images), and restore all three afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: 100 times slower, and it reseeds the GPUs'
        # generators, which fork_rng(devices=[]) does not restore
        python_state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@dataclass(frozen=True)
class ViewParams:
    """One view's drawn geometry: the crop (``top``, ``left``, ``height``, ``width``, in the decoded image's pixels)
    and whether each of the view's flips or rotations after the crop applies."""

    top: int
    left: int
    height: int
    width: int
    applied: tuple[bool, ...]


@dataclass(frozen=True)
class ViewGeometry:
    """A view's geometric ops, read from its torchvision/lightly ops: the random resized crop (``size``, ``scale``,
    ``ratio``, ``interpolation``) and the ops after it (``RandomHorizontalFlip``, ``RandomVerticalFlip``, lightly's
    ``RandomRotate``) with their probabilities."""

    size: tuple[int, int]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: Any
    after: tuple[tuple[str, float, int], ...]  # (op name, probability, rotation angle) of each op after the crop

    @classmethod
    def of(cls, view: Any) -> "ViewGeometry":
        """The geometry of one view of a lightly multi-view transform; refused in one line unless the view starts
        with a ``RandomResizedCrop`` and its geometric ops all come before its colour ops (which then commute)."""
        ops = view_ops(view)
        names = [type(op).__name__ for op in ops]
        geometric = [name in GEOMETRIC_OPS for name in names]
        count = sum(geometric)
        if not names or names[0] != "RandomResizedCrop" or not all(geometric[:count]):
            reason = (f"a view of the recipe ({', '.join(names)}) does not start with RandomResizedCrop followed by "
                      "its other geometric ops, which the loader workers would need to crop its images")
            raise TensorPipelineRefused(f"{reason}; use --data-pipeline pil.", reason=reason)
        crop = ops[0]
        after = tuple((type(op).__name__, float(getattr(op, "p", getattr(op, "prob", 0.0))),
                       int(getattr(op, "angle", 0))) for op in ops[1:count])  # fmt: skip
        return cls(tuple(crop.size), tuple(crop.scale), tuple(crop.ratio), crop.interpolation, after)

    @property
    def min_edge(self) -> float:
        """The shortest image edge at which the smallest crop (``scale[0]`` of the image's area) still holds
        ``max(size)`` pixels a side: decoding smaller would enlarge it."""
        return max(self.size) / math.sqrt(self.scale[0])

    def draw(self, image: PIL.Image.Image) -> ViewParams:
        """This view's random geometry for ``image``, from torch's global stream (torchvision's own crop sampler)."""
        top, left, height, width = T.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        applied = tuple(bool(probability > 0 and torch.rand(1).item() < probability)
                        for _, probability, _ in self.after)  # fmt: skip
        return ViewParams(top, left, height, width, applied)

    def apply(self, image: PIL.Image.Image, params: ViewParams) -> Tensor:
        """The view of ``image`` with ``params``: torchvision's resized crop (antialiased) and flips, as uint8
        3 x H x W."""
        view = F.resized_crop(image, params.top, params.left, params.height, params.width, list(self.size),
                              interpolation=self.interpolation, antialias=True)  # fmt: skip
        for (name, _, angle), applied in zip(self.after, params.applied):
            if applied:
                view = {"RandomHorizontalFlip": F.horizontal_flip, "RandomVerticalFlip": F.vertical_flip,
                        "RandomRotate": lambda image: F.rotate(image, angle)}[name](view)  # fmt: skip
        return F.pil_to_tensor(view)


class WorkerViews(Dataset):
    """The geometric part of every view of a data set's images, as uint8 tensors, decoded and cropped where the
    DataLoader calls ``__getitem__`` (its workers); indexed by ``EpochSampler``'s ``epoch * N + index``, each sample
    seeded with ``sample_seed(epoch, index)`` (``functools.partial(augmentation_seed, seed)``). ``transform``: the
    method's lightly multi-view transform, whose colour ops are left to ``batch_views(transform, geometric=False)``."""

    def __init__(self, data: ImageDataset, transform: Any, sample_seed: Callable[[int, int], int]) -> None:
        self.name, self.image_column = data.name, data.image_column
        self.dataset, self.decoder = without_decoding(data)
        self.views = [ViewGeometry.of(view) for view in transform.transforms]
        self.min_edge = math.ceil(max(view.min_edge for view in self.views))
        self.sample_seed = sample_seed

    def __len__(self) -> int:
        return len(self.dataset)

    def decode(self, index: int) -> PIL.Image.Image:
        """Image ``index`` as RGB, a JPEG decoded at a reduced scale no smaller than ``min_edge`` (see the module);
        an image that does not decode is refused in one line naming its row and file."""
        value = self.dataset[index][self.image_column]
        image, error = _decode(self.decoder, value, at_least=self.min_edge)
        if error is not None:
            path = value.get("path") if isinstance(value, dict) else None
            raise ValueError(f"cannot read the image in row {index} of data set {self.name!r}"
                             f"{f' ({path})' if path else ''}: {error}. Replace or delete that file.")
        if not isinstance(image, PIL.Image.Image):
            image = PIL.Image.fromarray(np.asarray(image))
        return image.convert("RGB")

    def draw(self, image: PIL.Image.Image, seed: int) -> list[ViewParams]:
        """Every view's geometry for ``image``, drawn from ``seed`` alone."""
        with seeded(seed):
            return [view.draw(image) for view in self.views]

    def __getitem__(self, global_index: int) -> dict[str, list[Tensor]]:
        epoch, index = divmod(int(global_index), len(self))
        image = self.decode(index)
        params = self.draw(image, self.sample_seed(epoch, index))
        return {"views": [view.apply(image, p) for view, p in zip(self.views, params)]}
