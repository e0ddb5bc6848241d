"""Hardening round 3 of the zoo (issue 33): registry paths stay inside their roots (item 4), registry fields are
checked in one line (16), downloads resume only the same file (11), are never short (12) and give up on a dripping
server (14), one process builds a release while the others wait (13), and a build of another record is stale (15).

The downloads come from a loopback HTTP server on 127.0.0.1 (ETag, If-Range and Range as RFC 9110 describes them)."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_convert import state, tv_features, tv_resnet

from qscore_hf import QScoreModel, cli
from qscore_hf.io_utils import contained_path
from qscore_hf.zoo import DownloadError, load_registry
from qscore_hf.zoo import download as download_module
from qscore_hf.zoo.build import build_state, built_folder, read_zoo_record
from qscore_hf.zoo.download import download

ROOT = Path(__file__).resolve().parents[1]
HOST = "files.example.org"


class Server:
    """Serves ``files`` ({path: bytes}) with a strong ETag per content; honours ``Range`` only when ``If-Range``
    (when sent) names the current ETag; ``cut`` paths send half their body once; ``short`` paths always announce the
    full length and send half; ``drip`` paths send a byte every 50 ms; ``wrong_start`` paths answer a range request
    with 206 from byte 0. Every request is logged as (path, Range, If-Range)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.short: set[str] = set()
        self.drip: set[str] = set()
        self.wrong_start: set[str] = set()
        self.log: list[tuple[str, str | None, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                server.log.append((path, self.headers.get("Range"), self.headers.get("If-Range")))
                if path not in server.files:
                    self.send_error(404, "Not Found")
                    return
                body = server.files[path]
                etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
                start = 0
                range_ok = self.headers.get("Range") and self.headers.get("If-Range") in (None, etag)
                if range_ok:
                    start = 0 if path in server.wrong_start else int(self.headers["Range"][6:].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                rest = body[start:]
                if path in server.cut or path in server.short:
                    server.cut.discard(path)
                    self.wfile.write(rest[: len(rest) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if path in server.drip:
                    for index in range(min(len(rest), 200)):  # bounded: the client gives up long before
                        self.wfile.write(rest[index : index + 1])
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                self.wfile.write(rest)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def requests(self, path: str) -> list[tuple[str | None, str | None]]:
        return [(rng, if_range) for logged, rng, if_range in self.log if logged == path]


@pytest.fixture(scope="module")
def server():
    served = Server()
    yield served
    served.httpd.shutdown()


# ------------------------------------------------------------------------------------- item 11: resuming a download
def test_a_resume_after_the_file_changed_starts_over_instead_of_gluing_two_files(tmp_path, server):
    path = "files/changed.bin"
    old, new = os.urandom(2**20), os.urandom(2**20)  # a re-upload of the same size
    server.files[path] = old
    server.cut.add(path)
    with pytest.raises(DownloadError, match="run again to resume"):
        download(f"{server.url}/{path}", tmp_path / "changed.bin", retries=0, progress=False)
    assert (tmp_path / "changed.bin.part").stat().st_size == len(old) // 2
    server.files[path] = new
    download(f"{server.url}/{path}", tmp_path / "changed.bin", progress=False)
    assert (tmp_path / "changed.bin").read_bytes() == new
    (range_header, if_range) = server.requests(path)[1]
    assert range_header == f"bytes={len(old) // 2}-" and if_range and if_range.startswith('"')


def test_a_resume_of_the_same_file_sends_if_range_and_continues(tmp_path, server):
    path = "files/same.bin"
    data = os.urandom(2**20 + 17)
    server.files[path] = data
    server.cut.add(path)
    download(f"{server.url}/{path}", tmp_path / "same.bin", retries=1, progress=False)
    assert (tmp_path / "same.bin").read_bytes() == data
    assert [rng for rng, _ in server.requests(path)] == [None, f"bytes={len(data) // 2}-"]
    assert not list(tmp_path.glob("*.part*"))  # the partial file and its record are gone


def test_a_206_from_another_offset_is_not_appended(tmp_path, server):
    path = "files/wrong-start.bin"
    data = os.urandom(2**20)
    server.files[path] = data
    server.cut.add(path)
    server.wrong_start.add(path)
    download(f"{server.url}/{path}", tmp_path / "w.bin", retries=2, progress=False)
    assert (tmp_path / "w.bin").read_bytes() == data  # started over, not the first half twice


# ------------------------------------------------------------------------------------ item 12: short downloads
def test_a_body_shorter_than_announced_is_never_cached_and_the_error_names_the_file(tmp_path, server):
    path = "files/short.bin"
    server.files[path] = os.urandom(2**20)
    server.short.add(path)
    with pytest.raises(DownloadError, match=r"^short\.bin: .*closed after \d+ of the 1048576 bytes announced") as error:
        download(f"{server.url}/{path}", tmp_path / "short.bin", retries=1, progress=False)
    assert "\n" not in str(error.value) and "short.bin.part" in str(error.value)
    assert not (tmp_path / "short.bin").exists()
    server.short.discard(path)


# -------------------------------------------------------------------------------------- item 14: a dripping server
def test_a_dripping_server_is_given_up(tmp_path, server, monkeypatch):
    path = "files/drip.bin"
    server.files[path] = os.urandom(4096)
    server.drip.add(path)
    monkeypatch.setattr(download_module, "_RATE_WINDOW_S", 0.5)
    monkeypatch.setattr(download_module, "_MIN_RATE", 1024)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"under the minimum of 1 KiB/s.*run again to resume"):
        download(f"{server.url}/{path}", tmp_path / "drip.bin", retries=0, progress=False)
    assert time.monotonic() - started < 5  # the drip would take 200 x 50 ms and the per-read timeout never fires
    assert not (tmp_path / "drip.bin").exists()


# ------------------------------------------------------------------------------ items 4 and 16: registry records
def _record(name: str = "t-simclr", **changes) -> dict:
    record = {
        "name": name, "title": "fixture", "method": "simclr", "arch": "resnet18",
        "url": f"https://{HOST}/{name}/resnet50-1x.pth", "file_name": "resnet50-1x.pth",
        "layout": "simclr_v1_converted", "license": "mit", "license_source": "the test", "data": "imagenet-1k",
        "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0], "resize": 64, "crop": 64,
        "preprocessing_source": "the test", "sources": ["the test"],
    }  # fmt: skip
    return {**record, **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": f"https://{HOST}/a/../../../../outside.pth"}, "url .* normalized path"),
        ({"url": f"https://{HOST}/a/%2e%2e/%2e%2e/outside.pth"}, "url .* normalized path"),
        ({"url": "file:///etc/passwd"}, "url .* http"),
        ({"file_name": "../../outside.pth"}, "file_name .* plain name"),
        ({"name": "../escaped"}, "name .* plain name"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"size": "100"}, "size must be a positive integer"),
        ({"crop": 0}, "crop must be a positive integer"),
        ({"crop": 300}, "crop 300 is larger than resize 64"),
        ({"image_mean": [0.5, 0.5]}, "image_mean must be 3 numbers"),
        ({"image_std": [1.0, 0.0, 1.0]}, "image_std must be positive"),
        ({"checksum": "md5:4"}, "checksum 'md5:4' has 1 hex digits"),
        ({"checksum": "sha1:" + "0" * 40}, "is not md5:HEX or sha256:HEX"),
        ({"top1": "high"}, "top1 must be a percentage"),
    ],
)
def test_a_bad_registry_record_is_one_line_naming_the_field(tmp_path, monkeypatch, capsys, changes, message):
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps([_record(**changes)]))
    monkeypatch.setenv("QSCORE_HF_ZOO_REGISTRY", str(registry))
    monkeypatch.setenv("QSCORE_HF_ZOO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=message):
        load_registry()
    assert cli.main(["zoo", "list"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("qscore-hf zoo: error: zoo registry record") and "\n" not in error, error


def test_contained_path_refuses_what_leaves_its_root(tmp_path):
    assert contained_path(tmp_path, "a", "b") == tmp_path / "a" / "b"
    for parts in (("..", "x"), ("",), (".",), ("/etc",), ("a", "..", "..", "x")):
        with pytest.raises(ValueError, match="would lie outside"):
            contained_path(tmp_path, *parts)


# ------------------------------------------------------------------------- items 12, 13 and 15: builds of a release
@pytest.fixture
def zoo(tmp_path, monkeypatch, server):
    """A one-release registry whose file the server holds; returns (registry writer, file bytes, reference)."""
    ref = tv_resnet(seed=8)
    checkpoint = tmp_path / "resnet50-1x.pth"
    torch.save({"state_dict": state(ref)}, checkpoint)
    data = checkpoint.read_bytes()
    server.files[f"{HOST}/t-simclr/resnet50-1x.pth"] = data
    monkeypatch.setenv("QSCORE_HF_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QSCORE_HF_ZOO_MIRROR", server.url)

    def use(**changes) -> dict:
        path = tmp_path / "registry.json"
        path.write_text(json.dumps([_record(**changes)]))
        monkeypatch.setenv("QSCORE_HF_ZOO_REGISTRY", str(path))
        return _record(**changes)

    use()
    return use, data, tv_features(ref)


def test_a_broken_download_without_checksum_is_deleted_and_named(zoo, server, tmp_path, capsys):
    use, data, _ = zoo
    served = f"{HOST}/t-simclr/resnet50-1x.pth"
    server.files[served] = data[: len(data) // 3]  # a mirror serving a truncated file, with a consistent length
    assert cli.main(["zoo", "build", "t-simclr", "--no-progress"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    cached = tmp_path / "cache" / "downloads" / served
    assert str(cached) in error and "was deleted" in error and not cached.exists()
    server.files[served] = data  # the mirror is repaired: the next build downloads anew and succeeds
    assert cli.main(["zoo", "build", "t-simclr", "--no-progress"]) == 0


def test_a_build_from_another_record_is_stale_and_rebuilt(zoo, capsys):
    use, data, reference = zoo
    folder = built_folder("t-simclr")
    QScoreModel.from_pretrained("t-simclr")
    assert build_state(load_registry()["t-simclr"], folder) == "yes"
    use(resize=73, crop=64)  # the registry's preprocessing was corrected
    release = load_registry()["t-simclr"]
    assert build_state(release, folder) == "stale"
    assert cli.main(["zoo", "list"]) == 0 and capsys.readouterr().out.splitlines()[1].endswith("stale")
    model = QScoreModel.from_pretrained("t-simclr")
    assert model.image_processor().size == {"shortest_edge": 73}
    assert read_zoo_record(folder)["release"]["resize"] == 73 and build_state(release, folder) == "yes"


CONCURRENT_LOAD = """
import sys, warnings
warnings.simplefilter("ignore")
from qscore_hf import QScoreModel
model = QScoreModel.from_pretrained("t-simclr")
print("LOADED", model.config.hidden_size)
"""


def test_two_processes_loading_one_release_build_it_once(zoo, server, tmp_path):
    _, data, _ = zoo
    served = f"{HOST}/t-simclr/resnet50-1x.pth"
    server.drip.discard(served)
    before = len(server.requests(served))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT_LOAD], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0 and "LOADED 512" in out, err[-2000:]
    assert len(server.requests(served)) == before + 1  # one download, one build; the other process waited
    assert sum("wrote" in err for _, err in outputs) == 1
    cache = tmp_path / "cache"
    assert not [p for p in (cache / "downloads").rglob("*") if p.name.endswith((".part", ".part.json"))]
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".")]


def test_finetune_refuses_its_output_folder_before_any_training(tmp_path, monkeypatch):
    """An output folder holding someone else's files is refused in one line before the fine-tuning starts, not
    after hours of it (the final save refused it only then)."""
    from qscore_hf.zoo.finetune import FinetuneSettings, qreg_finetune

    def no_training(*args, **kwargs):
        raise AssertionError("fine-tuning started")

    monkeypatch.setattr("qscore_hf.pretraining.pretrain", no_training)
    out = tmp_path / "release-qreg"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    release = next(iter(load_registry().values()))
    with pytest.raises(FileExistsError, match=r"release-qreg already holds what qscore-hf did not write there"):
        qreg_finetune(release, tmp_path / "base", FinetuneSettings("digits"), out, tmp_path / "work", progress=False)
    assert (out / "thesis.tex").read_text() == "mine" and not (tmp_path / "work").exists()
