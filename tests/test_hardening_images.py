"""Hardening round 3, item 5: an image column of bytes, paths or URLs (issue 33). Bytes are decoded, paths are
read only inside the data set's folder, URLs are refused in one line and never fetched."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from qscore_hf.data import load_image_dataset


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _write(folder: Path, images: pa.Array) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": images, "label": list(range(len(images)))}), folder / "data.parquet")
    return folder


def test_png_bytes_without_image_metadata_are_decoded(tmp_path):
    folder = _write(tmp_path / "bytes", pa.array([_png(7), _png(200)], pa.binary()))
    data = load_image_dataset(str(folder), "train")
    pixels = [np.asarray(row["image"]) for row in data.dataset]
    assert [int(p[0, 0, 0]) for p in pixels] == [7, 200] and pixels[0].shape == (8, 8, 3)


def test_relative_paths_inside_the_folder_are_read(tmp_path):
    folder = tmp_path / "paths"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(_png(30))
    _write(folder, pa.array(["images/a.png", None]))
    data = load_image_dataset(str(folder / "data.parquet"), "train")  # its folder holds the images
    assert int(np.asarray(data.dataset[0]["image"])[0, 0, 0]) == 30 and data.dataset[1]["image"] is None


@pytest.mark.parametrize("value", ["../secret.png", "/etc/hostname", "images/../../secret.png", "link.png"])
def test_paths_outside_the_folder_are_refused_in_one_line(tmp_path, value):
    (tmp_path / "secret.png").write_bytes(_png(1))
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "link.png").symlink_to(tmp_path / "secret.png")  # a link out of the folder counts as outside
    _write(folder, pa.array([value]))
    with pytest.raises(ValueError, match=r"image column 'image' row 0 names .*outside the data set's folder") as error:
        load_image_dataset(str(folder / "data.parquet"), "train")
    assert "\n" not in str(error.value)


def test_urls_are_refused_and_never_fetched(tmp_path):
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(_png(9))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.png"
        folder = _write(tmp_path / "urls", pa.array([url, url]))
        with pytest.raises(ValueError, match=r"image column 'image' holds URLs \(row 0: http://127\.0\.0\.1") as error:
            load_image_dataset(str(folder), "train")
        assert "\n" not in str(error.value) and "--allow-downloads" in str(error.value)
    finally:
        server.shutdown()
    assert requests == []
