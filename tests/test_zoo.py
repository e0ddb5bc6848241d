"""The zoo (qscore_hf/zoo): a registry of releases built end to end from a loopback HTTP server (127.0.0.1, a thread
of this test) serving small ResNet-18 files in each release's layout (the converter's fixtures, tests/test_convert.py),
with a registry of their own checksums pointed at the server through the mirror setting. Offline."""

# Defaults switched off in this file, and why: progress bars off (--no-progress / progress=False): they only fill the
# test log.
# Every entry point still runs with all defaults on somewhere: tests/documented_commands.py ENTRY_POINTS.

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from test_convert import byol_converted, dino_backbone, moco, mocov3, simsiam, state, swav, tv_features, tv_resnet

from qscore_hf import QScoreModel, cli
from qscore_hf.cards import check_card
from qscore_hf.convert import ConversionReport
from qscore_hf.io_utils import OUTPUT_MANIFEST
from qscore_hf.zoo import DownloadError, load_registry
from qscore_hf.zoo.build import parse_stats
from qscore_hf.zoo.card import CARDS_DIR, check_cards
from qscore_hf.zoo.cli import format_table
from qscore_hf.zoo.download import download

ROOT = Path(__file__).resolve().parents[1]
HUB_LICENSES = {"apache-2.0", "mit", "cc-by-nc-4.0"}  # ids of the Hub's license list that the registry uses
HOST = "dl.example.org"  # the fixture registry's "official" host; files are fetched from the mirror


# ---------------------------------------------------------------------------------------------- loopback server
class Server:
    """Serves ``files`` ({url path: bytes}) with HTTP range requests; ``cut`` paths send half their body and close
    once; ``slow`` paths trickle; ``html`` paths come as text/html (a login or confirmation page); every request is
    logged as (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.slow: set[str] = set()
        self.html: set[str] = set()
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                server.log.append((path, self.headers.get("Range")))
                if path not in server.files:
                    self.send_error(404, "Not Found")
                    return
                body, start = server.files[path], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "text/html" if path in server.html else "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if path in server.cut:
                    server.cut.discard(path)
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                step = 2**14 if path in server.slow else len(body)
                for offset in range(start, len(body), step):
                    self.wfile.write(body[offset : offset + step])
                    if path in server.slow:
                        time.sleep(0.05)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda request, address: None  # a client that hangs up early is no test failure
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def requests(self, path: str) -> list[str | None]:
        return [rng for logged, rng in self.log if logged == path]


@pytest.fixture(scope="module")
def server():
    served = Server()
    yield served
    served.httpd.shutdown()


# ------------------------------------------------------------------------------------------ fixture registry
def simclr_resnet18(tmp: Path):
    ref = tv_resnet(seed=8)
    path = tmp / "resnet50-1x.pth"
    torch.save({"state_dict": state(ref)}, path)
    return path, tv_features(ref)


# name -> (builder, layout, method, mean, std, checksum kind)
FIXTURES = {
    "t-moco": (moco, "moco", "mocov2", None, None, "md5-prefix"),
    "t-mocov3": (mocov3, "mocov3", "mocov3", None, None, "sha256"),
    "t-simsiam": (simsiam, "simsiam", "simsiam", None, None, None),
    "t-swav": (swav, "swav", "swav", None, (0.228, 0.224, 0.225), "md5-prefix"),
    "t-dino": (dino_backbone, "dino_backbone", "dino", None, None, "sha256"),
    "t-byol": (byol_converted, "byol_converted", "byol", None, None, None),
    "t-simclr": (simclr_resnet18, "simclr_v1_converted", "simclr", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "sha256"),
}


def record(name: str, path: Path, layout: str, method: str, mean=None, std=None, checksum=None) -> dict:
    return {
        "name": name, "title": f"fixture {name}", "method": method, "arch": "resnet18",
        "url": f"https://{HOST}/{name}/{path.name}", "file_name": path.name, "layout": layout,
        "checksum": checksum, "checksum_source": "the test" if checksum else None,
        "license": "mit", "license_source": "the test", "data": "imagenet-1k",
        "image_mean": list(mean or (0.485, 0.456, 0.406)), "image_std": list(std or (0.229, 0.224, 0.225)),
        "resize": 256, "crop": 224, "preprocessing_source": "the test", "top1": 50.0,
        "top1_source": "https://example.org/results", "top1_note": "made up for the test", "sources": ["the test"],
    }  # fmt: skip


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, server):
    """{name: (record, file bytes, reference features)}, each file served under its URL path."""
    built = {}
    for name, (builder, layout, method, mean, std, kind) in FIXTURES.items():
        folder = tmp_path_factory.mktemp(name)
        path, reference = builder(folder)
        data = path.read_bytes()
        checksum = {"md5-prefix": f"md5:{hashlib.md5(data).hexdigest()[:8]}",
                    "sha256": f"sha256:{hashlib.sha256(data).hexdigest()}"}.get(kind)  # fmt: skip
        entry = record(name, path, layout, method, mean, std, checksum)
        server.files[f"{HOST}/{name}/{path.name}"] = data
        built[name] = (entry, data, reference)
    return built


@pytest.fixture
def zoo(tmp_path, monkeypatch, fixtures, server):
    """The fixture registry, an empty cache and the mirror set through the environment; returns a writer of
    registries (to add broken records)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QSCORE_HF_ZOO_CACHE", str(cache))
    monkeypatch.setenv("QSCORE_HF_ZOO_MIRROR", server.url)

    def use(records: list[dict]) -> Path:
        path = tmp_path / "registry.json"
        path.write_text(json.dumps(records))
        monkeypatch.setenv("QSCORE_HF_ZOO_REGISTRY", str(path))
        return cache

    use([entry for entry, _, _ in fixtures.values()])
    return use


def features(model: QScoreModel, size: int = 64) -> torch.Tensor:
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(images, return_qscore=False).features


def reference_features(reference, size: int = 64) -> torch.Tensor:
    return reference(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)))


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------------------------------- tests
GOLDEN_SHIPPED = """\
name               method   architecture           data         license       published top-1  built
mocov2-r50-800ep   mocov2   resnet50               imagenet-1k  mit           71.1             no
simsiam-r50-100ep  simsiam  resnet50               imagenet-1k  cc-by-nc-4.0  68.3             no
swav-r50-800ep     swav     resnet50               imagenet-1k  cc-by-nc-4.0  75.3             no
dino-r50           dino     resnet50               imagenet-1k  apache-2.0    75.3             no
byol-r50           byol     resnet50               imagenet-1k  apache-2.0    74.6             no
simclr-v1-r50      simclr   resnet50               imagenet-1k  apache-2.0    68.9             no
dino-vits16        dino     vit_small_patch16_224  imagenet-1k  apache-2.0    77.0             no
dino-vits8         dino     vit_small_patch8_224   imagenet-1k  apache-2.0    79.7             no
dino-vitb16        dino     vit_base_patch16_224   imagenet-1k  apache-2.0    78.2             no
dino-vitb8         dino     vit_base_patch8_224    imagenet-1k  apache-2.0    80.1             no
mocov3-vits-300ep  mocov3   vit_small_patch16_224  imagenet-1k  cc-by-nc-4.0  73.2             no
mocov3-vitb-300ep  mocov3   vit_base_patch16_224   imagenet-1k  cc-by-nc-4.0  76.7             no
mocov3-r50-1000ep  mocov3   resnet50               imagenet-1k  cc-by-nc-4.0  74.6             no"""


def test_zoo_list_of_the_shipped_registry_matches_the_golden_table(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("QSCORE_HF_ZOO_REGISTRY", raising=False)
    monkeypatch.setenv("QSCORE_HF_ZOO_CACHE", str(tmp_path))
    assert cli.main(["zoo", "list"]) == 0
    assert capsys.readouterr().out == GOLDEN_SHIPPED + "\n"


def test_shipped_records_name_their_sources_and_what_is_unverified():
    from qscore_hf.convert import FORMATS

    registry = load_registry()
    assert {"mocov2-r50-800ep", "simsiam-r50-100ep", "swav-r50-800ep", "dino-r50", "byol-r50", "simclr-v1-r50",
            "dino-vits16", "dino-vits8", "dino-vitb16", "dino-vitb8", "mocov3-vits-300ep", "mocov3-vitb-300ep"} <= set(registry)  # fmt: skip
    for release in registry.values():
        assert release.layout in FORMATS and release.license in HUB_LICENSES and release.sources
        for fact in ("size", "checksum", "epochs"):
            if getattr(release, fact) is None:
                assert any(item.startswith(fact) for item in release.unverified), (release.name, fact)
        if release.checksum:
            assert release.checksum_source
        assert release.top1_source and release.top1_source.startswith("https://")
    # MoCo's README publishes the md5 prefix; OML pins DINO ViT-S/16's as well
    assert registry["mocov2-r50-800ep"].checksum == "md5:a04e12f8"
    assert registry["dino-vits16"].checksum == "md5:cf0f22"
    assert registry["simsiam-r50-100ep"].url_path.endswith("100ep-256bs/pretrain/checkpoint_0099.pth.tar")
    assert registry["byol-r50"].url_path == "drive.google.com/uc/pretrain_res50x1.pth.tar"


def test_model_cards_folder_is_up_to_date_and_cards_pass_huggingface_hub_parsing():
    registry = load_registry()
    assert check_cards(registry, CARDS_DIR) == [], "run `qscore-hf zoo cards` to re-render model_cards/"
    for release in registry.values():
        card = check_card((CARDS_DIR / release.name / "README.md").read_text())  # huggingface_hub's parsers, offline
        data = card.data
        assert data.license == release.license and data.datasets == ["imagenet-1k"]
        assert data.library_name == "qscore-hf" and data.pipeline_tag == "image-feature-extraction"
        (result,) = data.eval_results  # model-index parsed back by huggingface_hub
        assert (result.metric_value, result.source_url) == (release.top1, release.top1_source)
        assert "published" in result.metric_name and "Nothing: this card is rendered from the registry" in card.text
        for item in release.unverified:
            assert f"- {item}" in card.text


def test_cards_check_fails_on_a_stale_card(tmp_path, capsys):
    assert cli.main(["zoo", "cards", "--out", str(tmp_path)]) == 0
    assert cli.main(["zoo", "cards", "--out", str(tmp_path), "--check"]) == 0
    card = tmp_path / "dino-vitb8" / "README.md"
    card.write_text(card.read_text().replace("80.1", "81.0"))
    capsys.readouterr()
    assert cli.main(["zoo", "cards", "--out", str(tmp_path), "--check"]) == 1
    assert "dino-vitb8" in capsys.readouterr().err


def test_build_all_end_to_end(zoo, fixtures, server, tmp_path, capsys):
    out = tmp_path / "models"
    # every default on (progress bars included): the entry point's test for tests/documented_commands.py ENTRY_POINTS
    assert cli.main(["zoo", "build", "--all", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    for name, (entry, data, reference) in fixtures.items():
        folder = out / name
        model = QScoreModel.from_pretrained(folder)
        assert (features(model) - reference_features(reference)).abs().max() < 1e-5, name
        assert model.config.image_mean == entry["image_mean"] and model.config.image_std == entry["image_std"]
        report = ConversionReport.from_config(model.config)
        assert report.format == entry["layout"] and report.method == entry["method"]
        sha256 = hashlib.sha256(data).hexdigest()
        measured = json.loads((folder / "zoo.json").read_text())["measured"]
        assert measured["sha256"] == sha256 and measured["size"] == len(data)
        card = check_card((folder / "README.md").read_text())
        assert card.data.eval_results[0].metric_value == 50.0 and "published" in card.data.eval_results[0].metric_name
        assert f"SHA-256 of the downloaded file: `{sha256}`" in card.text and "(measured;" in card.text
        if entry["checksum"] is None:
            assert f"{name}: no published checksum; computed SHA-256 {sha256}" in printed
        else:
            assert f"{name}: verified {entry['checksum']}" in printed
        assert server.requests(f"{HOST}/{name}/{entry['file_name']}") == [None]  # one plain request each
    assert not any(name.startswith(".") for name in os.listdir(out))  # no temporary folders left


def test_cut_download_resumes(tmp_path, server):
    path = "files/cut.bin"
    data = os.urandom(3 * 2**20 + 123)
    server.files[path] = data
    server.cut.add(path)
    target = tmp_path / "cut.bin"
    with pytest.raises(DownloadError, match=r"^cut.bin: the download of .* was cut at 1\.5 of 3\.0 MiB .*run again to resume"):
        download(f"{server.url}/{path}", target, retries=0, progress=False)
    part = tmp_path / "cut.bin.part"
    assert not target.exists() and part.stat().st_size == len(data) // 2
    download(f"{server.url}/{path}", target, progress=False)
    assert target.read_bytes() == data and not part.exists()
    assert server.requests(path) == [None, f"bytes={len(data) // 2}-"]
    # within one call: the cut is resumed at once
    server.cut.add(path)
    download(f"{server.url}/{path}", tmp_path / "again.bin", retries=1, progress=False)
    assert (tmp_path / "again.bin").read_bytes() == data
    assert server.requests(path)[-2:] == [None, f"bytes={len(data) // 2}-"]


def test_wrong_checksum_leaves_no_file_and_names_the_release(zoo, fixtures, tmp_path, capsys):
    entry = dict(fixtures["t-moco"][0], name="t-moco-bad", checksum="md5:00000000")
    cache = zoo([entry])
    assert cli.main(["zoo", "build", "t-moco-bad", "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qscore-hf zoo: error: t-moco-bad: moco_v2_200ep_pretrain.pth.tar failed verification")
    assert "the file was deleted" in err
    assert leftovers(cache / "downloads") == [HOST, f"{HOST}/t-moco"]  # folders only: no file, no .part
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


def test_404_and_too_large_are_one_line_errors(zoo, fixtures, tmp_path, capsys):
    missing = dict(fixtures["t-dino"][0], name="t-missing", url=f"https://{HOST}/nowhere/x.pth", file_name="x.pth")
    large = dict(fixtures["t-dino"][0], name="t-large")
    cache = zoo([missing, large])
    assert cli.main(["zoo", "build", "t-missing", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t-missing: " in err and "answered HTTP 404 Not Found" in err
    assert cli.main(["zoo", "build", "t-large", "--max-size", "0.5", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t-large: " in err and "over the size cap of 0.5 MiB" in err
    kept = [p for p in leftovers(cache) if (cache / p).is_file() and not p.startswith("locks/")]  # empty lock files
    assert kept == []  # no file, no partial file, no model


def test_build_interrupted_while_saving_leaves_nothing_then_rerun_succeeds(zoo, fixtures, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_save = QScoreModel.save_pretrained

    def killed(self, folder, *args, **kwargs):
        real_save(self, folder, *args, **kwargs)
        raise KeyboardInterrupt  # as if stopped between the weights and the card

    monkeypatch.setattr(QScoreModel, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["zoo", "build", "t-swav", "--out", str(out), "--no-progress"])
    assert leftovers(out) == []
    monkeypatch.setattr(QScoreModel, "save_pretrained", real_save)
    assert cli.main(["zoo", "build", "t-swav", "--out", str(out), "--no-progress"]) == 0
    assert {"README.md", "config.json", "model.safetensors", "zoo.json"} <= set(os.listdir(out / "t-swav"))
    assert ConversionReport.from_config(QScoreModel.from_pretrained(out / "t-swav").config).format == "swav"


def test_build_killed_mid_download_leaves_nothing_and_rerun_resumes(zoo, fixtures, server, tmp_path):
    entry, data, reference = fixtures["t-simsiam"]
    path = f"{HOST}/t-simsiam/{entry['file_name']}"
    server.slow.add(path)
    out, cache = tmp_path / "out", Path(os.environ["QSCORE_HF_ZOO_CACHE"])
    part = cache / "downloads" / f"{path}.part"
    process = subprocess.Popen(
        [sys.executable, "-m", "qscore_hf.cli", "zoo", "build", "t-simsiam", "--out", str(out), "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (part.is_file() and part.stat().st_size > 2**16) and time.monotonic() < deadline:
            assert process.poll() is None, "the build ended before it could be killed"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        server.slow.discard(path)
    kept = part.stat().st_size
    assert 0 < kept < len(data) and leftovers(out) == []
    assert cli.main(["zoo", "build", "t-simsiam", "--out", str(out), "--no-progress"]) == 0
    assert server.requests(path)[-1] == f"bytes={kept}-"
    model = QScoreModel.from_pretrained(out / "t-simsiam")
    assert (features(model) - reference_features(reference)).abs().max() < 1e-5


def test_from_pretrained_by_zoo_name_downloads_once(zoo, fixtures, server):
    entry, _, reference = fixtures["t-byol"]
    path = f"{HOST}/t-byol/{entry['file_name']}"
    before = len(server.requests(path))
    with pytest.warns(UserWarning, match=r"t-byol has no activation statistics: D is all 512 features.*"
                                         r"qscore-hf zoo build t-byol --stats DATASET\[:SPLIT\]"):  # fmt: skip
        first = QScoreModel.from_pretrained("t-byol")
    with pytest.warns(UserWarning, match="D is all 512 features"):
        second = QScoreModel.from_pretrained("t-byol")
    assert len(server.requests(path)) == before + 1
    assert torch.equal(features(first), features(second))
    assert (features(first) - reference_features(reference)).abs().max() < 1e-5
    assert (Path(os.environ["QSCORE_HF_ZOO_CACHE"]) / "models" / "t-byol" / "zoo.json").is_file()
    # the cards' usage code: the model's own processor does the release's evaluation preprocessing (resize 256, crop 224)
    processor = first.image_processor()
    assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}


def test_stats_are_measured_and_marked_so(zoo, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["zoo", "build", "t-dino", "--out", str(out), "--stats", "digits:train", "--stats-max-samples",
                     "32", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    card = ModelCard.load(out / "t-dino" / "README.md")
    assert "- Activation statistics from 32 images of `digits` (train):" in card.text and "(measured)" in card.text
    assert int(QScoreModel.from_pretrained(out / "t-dino").activation_stats.num_samples) == 32


def test_push_to_hub_uploads_each_release_and_gathers_a_collection(zoo, tmp_path, monkeypatch, capsys):
    calls = []

    class Collection:
        slug = "org/q-score-zoo-0123"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw)) or "commit-url")
    monkeypatch.setattr(HfApi, "create_collection",
                        lambda self, title, **kw: calls.append(("create_collection", title, kw)) or Collection())
    monkeypatch.setattr(HfApi, "add_collection_item",
                        lambda self, slug, item_id, item_type, **kw: calls.append(("add", slug, item_id, item_type, kw)))
    out = tmp_path / "out"
    code = cli.main(["zoo", "build", "t-dino", "t-byol", "--out", str(out), "--push-to-hub", "org", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert calls == [
        ("create_repo", "org/t-dino", {"repo_type": "model", "private": None, "exist_ok": True}),
        ("upload_folder", {"repo_id": "org/t-dino", "folder_path": str(out / "t-dino"), "repo_type": "model",
                           "commit_message": "Add t-dino (qscore-hf zoo)", "ignore_patterns": [OUTPUT_MANIFEST]}),
        ("create_repo", "org/t-byol", {"repo_type": "model", "private": None, "exist_ok": True}),
        ("upload_folder", {"repo_id": "org/t-byol", "folder_path": str(out / "t-byol"), "repo_type": "model",
                           "commit_message": "Add t-byol (qscore-hf zoo)", "ignore_patterns": [OUTPUT_MANIFEST]}),
        ("create_collection", "Q-Score zoo: self-supervised backbones",
         {"namespace": "org", "description": calls[4][2]["description"], "private": False, "exists_ok": True}),
        ("add", "org/q-score-zoo-0123", "org/t-dino", "model", {"exists_ok": True}),
        ("add", "org/q-score-zoo-0123", "org/t-byol", "model", {"exists_ok": True}),
    ]  # fmt: skip
    assert 'from_pretrained("org/t-dino")' in (out / "t-dino" / "README.md").read_text()
    assert "collection org/q-score-zoo-0123" in capsys.readouterr().out


@pytest.mark.parametrize(("spec", "expected"), [
    ("imagenet-1k", ("imagenet-1k", "validation")), ("digits:train", ("digits", "train")),
    ("/data/val", ("/data/val", "validation")), ("C:\\data", ("C:\\data", "validation")),
    ("org/data:test", ("org/data", "test")),
])  # fmt: skip
def test_parse_stats(spec, expected):
    assert parse_stats(spec) == expected


def test_shipped_table_marks_a_built_release(tmp_path, monkeypatch):
    monkeypatch.delenv("QSCORE_HF_ZOO_REGISTRY", raising=False)
    registry = load_registry()
    for name in ("dino-vits8", "dino-vitb8"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "config.json").write_text("{}")
    record = {"release": json.loads(json.dumps(registry["dino-vits8"].to_dict())), "measured": {}}
    (tmp_path / "models" / "dino-vits8" / "zoo.json").write_text(json.dumps(record))
    record["release"]["checksum"] = "md5:000000"  # built from an earlier record: stale (issue 33, item 15)
    (tmp_path / "models" / "dino-vitb8" / "zoo.json").write_text(json.dumps(record))
    lines = format_table(registry, tmp_path).splitlines()
    assert [line.split()[-1] for line in lines[1:]].count("yes") == 1
    assert lines[8].startswith("dino-vits8") and lines[8].endswith("yes")
    assert lines[10].startswith("dino-vitb8") and lines[10].endswith("stale")


def test_zoo_help_and_list_import_neither_torch_nor_transformers(tmp_path):
    code = ("import sys\nfrom qscore_hf.cli import main\nmain(['zoo', 'list'])\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "QSCORE_HF_ZOO_CACHE": str(tmp_path)}
    env.pop("QSCORE_HF_ZOO_REGISTRY", None)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "[]" and run.stdout.startswith(GOLDEN_SHIPPED)


def test_another_file_than_the_registry_describes_is_refused(zoo, fixtures, tmp_path, capsys):
    wrong_layout = dict(fixtures["t-moco"][0], name="t-moco-as-swav", layout="swav", checksum=None)
    wrong_arch = dict(fixtures["t-dino"][0], name="t-dino-as-r50", arch="resnet50", checksum=None)
    zoo([wrong_layout, wrong_arch])
    out = tmp_path / "out"
    assert cli.main(["zoo", "build", "t-moco-as-swav", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t-moco-as-swav: moco_v2_200ep_pretrain.pth.tar is a resnet18 in layout 'moco', " \
        "but the registry describes a resnet18 in layout 'swav'" in err
    assert cli.main(["zoo", "build", "t-dino-as-r50", "--out", str(out), "--no-progress"]) == 1
    assert "registry describes a resnet50 in layout 'dino_backbone'" in capsys.readouterr().err
    assert leftovers(out) == []


def test_an_html_page_instead_of_the_file_is_a_one_line_error(zoo, fixtures, server, capsys):
    entry = fixtures["t-byol"][0]
    path = f"{HOST}/t-byol/{entry['file_name']}"
    server.html.add(path)
    try:
        assert cli.main(["zoo", "build", "t-byol", "--no-progress"]) == 1
    finally:
        server.html.discard(path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t-byol: " in err and "answered with an HTML page, not the file" in err


def test_build_all_goes_on_past_a_failing_release_and_says_which(zoo, fixtures, tmp_path, capsys):
    broken = dict(fixtures["t-dino"][0], name="t-broken", url=f"https://{HOST}/nowhere/y.pth", file_name="y.pth")
    zoo([broken, fixtures["t-dino"][0]])
    out = tmp_path / "out"
    assert cli.main(["zoo", "build", "--all", "--out", str(out), "--no-progress"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not transformers' bars
    assert len(lines) == 2 and "t-broken: " in lines[0] and "HTTP 404" in lines[0]
    assert lines[1] == "qscore-hf zoo: error: 1 of 2 releases failed (t-broken); the others were built."
    assert (out / "t-dino" / "config.json").is_file() and not (out / "t-broken").exists()


def test_a_vit_release_builds_with_its_cls_token_features(zoo, server, tmp_path, one_thread):
    """DINO's ViT-S/16 backbone file (timm names): the build checks it is a vit_small_patch16_224 in the
    dino_vit_backbone layout; the features are the CLS token after the final LayerNorm."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", num_classes=0).eval()
    source = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(vit.state_dict(), source)
    data = source.read_bytes()
    entry = record("t-dino-vits16", source, "dino_vit_backbone", "dino", checksum=f"md5:{hashlib.md5(data).hexdigest()[:6]}")
    entry["arch"] = "vit_small_patch16_224"
    server.files[f"{HOST}/t-dino-vits16/{source.name}"] = data
    zoo([entry])
    out = tmp_path / "out"
    assert cli.main(["zoo", "build", "t-dino-vits16", "--out", str(out), "--no-progress"]) == 0
    model = QScoreModel.from_pretrained(out / "t-dino-vits16")
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = vit.forward_features(images)[:, 0]
        assert (model(images, return_qscore=False).features - expected).abs().max() < 1e-5
    assert model.config.backbone == "vit_small_patch16_224"


def test_qreg_finetune_writes_name_qreg_with_both_measured_numbers(zoo, tmp_path, capsys):
    """The recipe's path at toy scale (1 epoch, 64 digits at 32 px): base and fine-tuned probed alike."""
    out = tmp_path / "out"
    code = cli.main(["zoo", "build", "t-byol", "--out", str(out), "--qreg-finetune", "digits", "--finetune-epochs", "1",
                     "--finetune-batch-size", "16", "--finetune-image-size", "32", "--finetune-max-samples", "64",
                     "--probe-epochs", "5", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    tuned = QScoreModel.from_pretrained(out / "t-byol-qreg")
    base = QScoreModel.from_pretrained(out / "t-byol")
    assert tuned.config.qscore_regularized and tuned.config.training["lr"] == 1e-5
    assert not torch.equal(features(tuned, 32), features(base, 32))  # the weights moved
    finetune = json.loads((out / "t-byol-qreg" / "zoo.json").read_text())["measured"]["finetune"]
    assert set(finetune["top1"]) == {"base", "qreg"} and all(0 <= v <= 1 for v in finetune["top1"].values())
    card = check_card((out / "t-byol-qreg" / "README.md").read_text())
    assert "## Q-reg fine-tuning (measured here)" in card.text and f"| base | {finetune['top1']['base']:.4f} |" in card.text
    assert f"linear-probe top-1 on digits (test), qreg: {finetune['top1']['qreg']:.4f}" in printed.out


def test_linear_eval_is_measured_into_the_card_and_the_record(zoo, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["zoo", "build", "t-dino", "--out", str(out), "--linear-eval", "digits:test",
                     "--linear-eval-max-samples", "64", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "t-dino-linear-eval" / "report.json").read_text())
    assert (report["dataset"], report["train_split"], report["eval_split"], report["num_eval"]) == ("digits", "train", "test", 64)
    measured = json.loads((out / "t-dino" / "zoo.json").read_text())["measured"]["linear_eval"]
    assert measured["top1"] == report["top1"] and measured["eval_split"] == "test"
    card = ModelCard.load(out / "t-dino" / "README.md")
    results = card.data.eval_results or []
    top1 = [r for r in results if r.metric_type == "accuracy" and r.dataset_split == "test"]
    assert top1 and top1[0].metric_value == pytest.approx(report["top1"], abs=1e-4)
    assert f"linear-probe top-1 {report['top1']:.4f} on digits (test), measured" in capsys.readouterr().out
