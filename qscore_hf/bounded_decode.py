"""Decode an image no larger than its preprocessing needs: a batch then holds small images, not full-resolution ones.

The model's image processor resizes every image to a shortest edge of a few dozen or hundred pixels; decoding a
12-megapixel photo at full resolution and keeping it until the whole batch reaches the processor costs 36 MB per
image (5 GB for a batch of 48 photos, for a 32-pixel model). Here each image is made small as it is decoded:

- ``decode_bounded``: a JPEG (or MPO) file is decoded directly at 1/2, 1/4 or 1/8 of its size with PIL's
  ``Image.draft`` (libjpeg's scaled inverse DCT), never holding its full-resolution pixels, as long as its shortest
  edge stays at least ``REDUCING_GAP`` times the target (PIL's ``thumbnail`` uses the same idea); other formats are
  decoded whole, one image at a time.
- ``shrink``: the processor's own resize (``processor.resize``, same filter, same output size) applied to one image
  right after it is decoded. The processor's later resize of that image is then the identity (torchvision returns a
  tensor already at the target size as it is), so the final pixels are bit-identical to those of a full decode for
  every format but JPEG; for JPEG the draft decode differs by about one 8-bit level on average (measured on real
  photos in ``tests/test_hardening_memory.py``).

``shortest_edge_of(processor)`` reads the target from a transformers image processor. Images keep their EXIF
orientation handling (applied as ``datasets.Image.decode_example`` does).
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_transforms import convert_to_rgb

__all__ = ["REDUCING_GAP", "decode_bounded", "shortest_edge_of", "shrink"]

# A JPEG is decoded at a reduced scale only while its shortest edge stays at least this many times the target: the
# processor's antialiased resize still does the last factor of four or more.
REDUCING_GAP = 4.0


def shortest_edge_of(processor: Any) -> int | None:
    """The shortest edge that ``processor``'s resize produces: ``size["shortest_edge"]``, or the smaller of
    ``size["height"]``/``size["width"]`` (a resize to a fixed size); ``None`` when it does not resize."""
    if processor is None or not getattr(processor, "do_resize", False):
        return None
    size = getattr(processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    if get("shortest_edge"):
        return int(get("shortest_edge"))
    if get("height") and get("width"):
        return int(min(get("height"), get("width")))
    return None


def decode_bounded(value: Any, shortest_edge: int | None, gap: float = REDUCING_GAP) -> PIL.Image.Image:
    """Decode ``value`` (a ``datasets`` image dict ``{"bytes", "path"}`` whose path, when read, is local; raw bytes;
    or a local path); a JPEG at the smallest of 1/1, 1/2, 1/4, 1/8 of its size whose shortest edge is still at least
    ``gap`` x ``shortest_edge`` (``None``: full size; ``gap`` 1: no smaller than ``shortest_edge`` itself). Raises
    what ``PIL.Image.open`` raises for a file that is not an image (``OSError``, ``DecompressionBombError``) and
    ``ValueError`` for a value with neither bytes nor a path."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        source = io.BytesIO(data) if data is not None else path
    else:
        source = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value
    if not isinstance(source, (io.BytesIO, str, os.PathLike)):
        raise ValueError(f"an image value holds neither bytes nor a path: {str(value)[:100]}")
    image = PIL.Image.open(source)
    if shortest_edge is not None and image.format in ("JPEG", "MPO"):
        factor = math.floor(min(image.size) / (gap * shortest_edge))
        scale = next((s for s in (8, 4, 2) if s <= factor), 1)
        if scale > 1:
            # PIL's draft picks the largest of 1/2, 1/4, 1/8 not above edge // asked (the smaller over both edges):
            # asking for edge // scale gets exactly ``scale`` (ceil(edge / scale) pixels); asking for
            # ceil(edge / factor) lost a step on every odd edge (401 // 201 = 1: a 401 px edge was decoded whole)
            image.draft(image.mode, (image.width // scale, image.height // scale))
    image.load()
    if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
        image = PIL.ImageOps.exif_transpose(image)
    return image


def shrink(image: Any, processor: Any) -> Any:
    """``image`` (an 8-bit PIL image) resized now by ``processor.resize`` exactly as the processor would resize it
    in its batch, so that the batch holds it small; the processor's own resize of the result is then the identity.
    Returned unchanged when the processor would not make it smaller (no resize, or an upscale) and for anything but
    a PIL image of 8-bit pixels (arrays, 16-bit images: the processor handles them as they are)."""
    target = shortest_edge_of(processor)
    if target is None or not isinstance(image, PIL.Image.Image) or min(image.size) <= target:
        return image
    if image.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        return image
    if getattr(processor, "do_convert_rgb", False):
        pixels = convert_to_rgb(image, return_numpy=True)  # what the processor does first, with the same function
    elif image.mode == "RGB":
        pixels = np.asarray(image, dtype=np.uint8)
    else:
        return image
    pixels = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    resized = processor.resize(pixels, processor.size, resample=processor.resample)
    return PIL.Image.fromarray(resized.permute(1, 2, 0).contiguous().numpy())
