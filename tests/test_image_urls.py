"""Image columns of http(s) URLs are fetched only when asked (within a timeout, a deadline and a size cap, never
offline), and string label columns are mapped to class indices only when asked, one mapping for both splits."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from qscore_hf.cli import main
from qscore_hf.data import load_image_dataset
from qscore_hf.features import class_indices
from qscore_hf.image_downloads import ImageDownloads

QUICK = ImageDownloads(timeout=1.0, deadline=2.0, max_bytes=4096)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(digits):
    """A loopback HTTP server: /digit.png (a real image), /big.png (over QUICK's cap), /page (HTML), /stall (sends
    nothing for 5 s), /drip (a byte every 0.25 s), /to-ftp (a redirect to ftp://); anything else 404."""
    images, _, _ = digits
    digit = _png(images[0])
    served = {"/changing.png": digit}  # what /changing.png serves, changed by a test
    big = _png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))  # noise: ~4 KB+ of PNG
    assert len(big) > QUICK.max_bytes

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path == "/stall":
                time.sleep(5)
                return
            if self.path == "/drip":  # a byte every 0.25 s: every read is in time, the whole is not
                self.send_response(200)
                self.send_header("Content-Length", "40")
                self.end_headers()
                try:
                    for _ in range(40):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.25)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
                    pass
                return
            if self.path == "/to-ftp":
                self.send_response(302)
                self.send_header("Location", "ftp://127.0.0.1/digit.png")
                self.end_headers()
                return
            body = {"/digit.png": digit, "/big.png": big, "/page": b"<html>no image</html>", **served}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            if self.path != "/big.png":  # no Content-Length: the cap counts bytes read
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", images[0], served
    httpd.shutdown()


def _url_parquet(tmp_path, urls):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"image": urls, "label": list(range(len(urls)))}), path)
    return str(path)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)


def test_urls_are_refused_without_the_option_naming_it(server, tmp_path):
    base, _, _ = server
    with pytest.raises(ValueError, match="--allow-downloads") as error:
        load_image_dataset(_url_parquet(tmp_path, [f"{base}/digit.png"]))
    assert "\n" not in str(error.value) and "'image'" in str(error.value)


def test_urls_are_refused_offline_even_when_asked(server, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1") as error:
        load_image_dataset(_url_parquet(tmp_path, [f"{server[0]}/digit.png"]), allow_downloads=True)
    assert "\n" not in str(error.value)


def test_an_image_url_is_fetched_and_decodes_to_the_served_pixels(server, tmp_path, online):
    base, pixels, _ = server
    loaded = load_image_dataset(_url_parquet(tmp_path, [f"{base}/digit.png", None]), allow_downloads=QUICK)
    assert isinstance(loaded.dataset.features["image"], datasets.Image)
    assert np.array_equal(np.asarray(loaded.dataset[0]["image"]), pixels)  # PNG is lossless
    assert loaded.dataset[1]["image"] is None  # a null stays null (counted unreadable downstream)


def test_a_url_serving_another_image_gives_another_fingerprint(server, tmp_path, digits, online):
    base, _, served = server
    parquet = _url_parquet(tmp_path, [f"{base}/changing.png"])
    first = load_image_dataset(parquet, allow_downloads=QUICK).dataset
    served["/changing.png"] = _png(digits[0][1])
    second = load_image_dataset(parquet, allow_downloads=QUICK).dataset
    assert np.array_equal(np.asarray(second[0]["image"]), digits[0][1])
    assert first._fingerprint != second._fingerprint  # the feature cache's key: old features are not served


@pytest.mark.parametrize(("path", "reason"), [
    ("/missing.png", "HTTP 404"),
    ("/stall", "timed out|TimeoutError|no answer"),
    ("/drip", "not read within the deadline of 2 s"),
    ("/big.png", "larger than the cap of 4096 bytes"),
    ("/page", "not an image"),
    ("/to-ftp", "not http"),
])  # fmt: skip
def test_a_failed_fetch_is_one_line_naming_row_column_and_url(server, tmp_path, online, path, reason):
    base, _, _ = server
    url = f"{base}{path}"
    started = time.monotonic()
    with pytest.raises(ValueError, match=reason) as error:
        load_image_dataset(_url_parquet(tmp_path, [f"{base}/digit.png", url]), allow_downloads=QUICK)
    message = str(error.value)
    assert "row 1" in message and "'image'" in message and url in message and "\n" not in message
    assert time.monotonic() - started < 4  # the stalling server is given up after QUICK's 1 s timeout


def test_score_fetches_urls_only_with_allow_downloads(server, tmp_path, online, capsys):
    from qscore_hf import QScoreConfig, QScoreModel

    base, _, _ = server
    model = tmp_path / "model"
    QScoreModel(QScoreConfig(backbone="resnet10t", image_size=32, crop_pct=1.0)).save_pretrained(model)
    argv = ["score", "--model", str(model), "--dataset", _url_parquet(tmp_path, [f"{base}/digit.png"] * 3),
            "--no-progress", "--device", "cpu", "--stats", "data"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 1
    assert "--allow-downloads" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert main([*argv, "--allow-downloads", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_samples"] == 3 and summary["skipped_images"]["count"] == 0


def _string_label_parquet(tmp_path, digits, name, rows):
    images, _, target = digits
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    table = pa.table({"image": [{"bytes": _png(images[k]), "path": None} for k in rows],
                      "label": [words[target[k]] for k in rows]})  # fmt: skip
    folder = tmp_path / name
    folder.mkdir()
    pq.write_table(table, folder / "train.parquet")
    return str(folder), [words[target[k]] for k in rows]


def test_string_labels_are_refused_naming_the_option_and_mapped_by_sorted_names_when_asked(tmp_path, digits):
    with pytest.raises(ValueError, match=r"'label': row 7 holds 'cat'.*--encode-labels"):
        class_indices([0, 1, 2, 3, 4, 5, 6, "cat"], torch.arange(8), "label")
    folder, words = _string_label_parquet(tmp_path, digits, "data", range(30))
    loaded = load_image_dataset(folder, encode_labels=True)
    names = sorted(set(words))
    assert loaded.class_names == names
    assert loaded.dataset["label"] == [names.index(word) for word in words]
    other, other_words = _string_label_parquet(tmp_path, digits, "other", range(30, 40))
    given = load_image_dataset(other, encode_labels=names[::-1])  # a given mapping (the train split's), used as given
    assert given.dataset["label"] == [names[::-1].index(word) for word in other_words]
    with pytest.raises(ValueError, match=r"label column 'label' row \d+ holds '\w+', which is not among"):
        load_image_dataset(other, encode_labels=["zero"])


def test_score_encode_labels_shares_one_mapping_and_records_it(tmp_path, digits):
    from qscore_hf import QScoreConfig, QScoreModel

    model = tmp_path / "model"
    QScoreModel(QScoreConfig(backbone="resnet10t", image_size=32, crop_pct=1.0)).save_pretrained(model)
    folder, words = _string_label_parquet(tmp_path, digits, "data", range(60))
    argv = ["score", "--model", str(model), "--dataset", folder, "--no-progress", "--device", "cpu", "--batch-size",
            "64"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 1
    assert main([*argv, "--encode-labels", "--probe", "--probe-epochs", "2", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["label_names"] == sorted(set(words))
    labels = pq.read_table(tmp_path / "out" / "per_sample.parquet").column("label").to_pylist()
    row_ids = pq.read_table(tmp_path / "out" / "per_sample.parquet").column("row_id").to_pylist()
    assert [summary["label_names"][label] for label in labels] == [words[row] for row in row_ids]


def test_linear_eval_encode_labels_maps_eval_by_the_train_split_and_refuses_unseen(tmp_path, digits):
    from qscore_hf import QScoreConfig, QScoreModel
    from qscore_hf.linear_eval import run_linear_eval

    model = tmp_path / "model"
    QScoreModel(QScoreConfig(backbone="resnet10t", image_size=32, crop_pct=1.0)).save_pretrained(model)
    folder, words = _string_label_parquet(tmp_path, digits, "data", range(60))
    (tmp_path / "data" / "train.parquet").rename(tmp_path / "data" / "train-0.parquet")
    _, test_words = _string_label_parquet(tmp_path, digits, "test", range(60, 80))
    (tmp_path / "test" / "train.parquet").rename(tmp_path / "data" / "test-0.parquet")
    options = {"epochs": 2, "device": "cpu", "progress": False, "update_model_card": False, "batch_size": 64}
    report = run_linear_eval(model, folder, tmp_path / "out", encode_labels=True, **options)
    assert report["label_names"] == sorted(set(words)) and set(test_words) <= set(words)
    labels = pq.read_table(tmp_path / "out" / "per_sample.parquet").column("label").to_pylist()
    assert [report["label_names"][label] for label in labels] == test_words
    with pytest.raises(ValueError, match=r"label column 'label'.*--encode-labels"):
        run_linear_eval(model, folder, tmp_path / "refused", **options)


def test_explain_takes_the_same_options_as_score(server, tmp_path, digits, online, monkeypatch, capsys):
    """explain's refusals name --allow-downloads and --encode-labels, so explain must accept them; a string label
    column is refused before any heatmap is computed, not after."""
    import qscore_hf.explain
    from qscore_hf import QScoreConfig, QScoreModel

    base, _, _ = server
    model = tmp_path / "model"
    QScoreModel(QScoreConfig(backbone="resnet10t", image_size=32, crop_pct=1.0)).save_pretrained(model)
    argv = ["explain", "--model", str(model), "--device", "cpu", "--max-images", "0", "--no-progress"]
    urls = _url_parquet(tmp_path, [f"{base}/digit.png"] * 2)
    assert main([*argv, "--dataset", urls, "--out", str(tmp_path / "refused")]) == 1
    assert "--allow-downloads" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert main([*argv, "--dataset", urls, "--allow-downloads", "--out", str(tmp_path / "fetched")]) == 0
    assert pq.read_table(tmp_path / "fetched" / "per_sample.parquet").column("label").to_pylist() == [0, 1]

    folder, words = _string_label_parquet(tmp_path, digits, "data", range(6))
    explained = []
    explain_batch = qscore_hf.explain.explain_batch
    monkeypatch.setattr(qscore_hf.explain, "explain_batch", lambda *a, **k: explained.append(1) or explain_batch(*a, **k))
    assert main([*argv, "--dataset", folder, "--out", str(tmp_path / "strings")]) == 1
    assert "--encode-labels" in capsys.readouterr().err and not explained and not (tmp_path / "strings").exists()
    assert main([*argv, "--dataset", folder, "--encode-labels", "--out", str(tmp_path / "encoded")]) == 0
    names = json.loads((tmp_path / "encoded" / "explain.json").read_text())["label_names"]
    assert names == sorted(set(words))
    labels = pq.read_table(tmp_path / "encoded" / "per_sample.parquet").column("label").to_pylist()
    assert [names[label] for label in labels] == words
