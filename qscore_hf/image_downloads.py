"""Fetch an image column's http(s) URLs, when the user asks for it (``allow_downloads``), within bounds.

Each URL is read with a timeout on connecting and on every read, an overall deadline, and a cap on the bytes actually
read (a ``Content-Length`` is not trusted); redirects are followed only to http(s). The standard library's urllib is
enough for that, and keeps the data layer free of another HTTP client.
"""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import PIL.Image

__all__ = ["ImageDownloads", "fetch_image"]

_CHUNK = 1 << 16


@dataclass(frozen=True)
class ImageDownloads:
    """Bounds on fetching one image: ``timeout`` seconds to connect and per read, ``deadline`` seconds for the whole
    image, at most ``max_bytes`` read."""

    timeout: float = 30.0
    deadline: float = 120.0
    max_bytes: int = 64 << 20


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, refusing a redirect to anything but http(s) (urllib also follows ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.URLError(f"redirected to {newurl[:100]}, which is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def fetch_image(url: str, limits: ImageDownloads) -> bytes:
    """The bytes of the image at ``url``, or ``ValueError`` saying why not (HTTP error, timeout, deadline, over
    ``limits.max_bytes``, not an image)."""
    started = time.monotonic()
    body = bytearray()
    try:
        with _OPENER.open(url, timeout=limits.timeout) as response:
            while chunk := response.read1(_CHUNK):  # what has arrived: the deadline is checked between reads
                body += chunk
                if len(body) > limits.max_bytes:
                    raise ValueError(f"larger than the cap of {limits.max_bytes} bytes")
                if time.monotonic() - started > limits.deadline:
                    raise ValueError(f"not read within the deadline of {limits.deadline:g} s")
    except urllib.error.HTTPError as error:
        raise ValueError(f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise ValueError(f"{error.reason}") from None
    except (TimeoutError, OSError) as error:  # socket timeouts on a read, connection resets
        raise ValueError(f"{type(error).__name__}: {error or f'no answer within {limits.timeout:g} s'}") from None
    try:
        PIL.Image.open(io.BytesIO(body))  # reads the header only: is it an image at all
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"not an image ({len(body)} bytes)") from None
    return bytes(body)
