"""The first minutes on the command line: argument errors and the typo of a built-in data set name fail in one line
before torch is imported (checked in a subprocess that lists the heavy modules it loaded, and timed), the light
copies of choices that the parsers use agree with the library's, and the demo says which data set it uses and why."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qscore_hf import data
from qscore_hf.data import check_dataset_name, load_image_dataset
from qscore_hf.demo import DATASET_CHOICES, dataset_notice, demo_setting

ROOT = Path(__file__).resolve().parents[1]

RUN_CLI = """
import sys, time
started = time.perf_counter()
from qscore_hf.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "transformers", "timm", "lightly", "sklearn") if m in sys.modules)
print(f"IMPORTED {heavy} in {time.perf_counter() - started:.2f} s", file=sys.stderr)
sys.exit(code)
"""


def cli(*args: str) -> tuple[int, str, list[str]]:
    """Exit code, error text (without the IMPORTED line) and the heavy modules imported, of one command line."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=ROOT, env=environment, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    error, imported = run.stderr.rsplit("IMPORTED ", 1)
    return run.returncode, error, eval(imported.split(" in ")[0])


@pytest.mark.parametrize(
    "args, message",
    [
        (("score", "--model", "org/m", "--dataset", "digits", "--out", "o", "--stats", "bogus"),
         "argument --stats: invalid choice: 'bogus'"),
        (("score", "--model", "org/m", "--dataset", "digts", "--out", "o"), "did you mean digits?"),
        (("score", "--model", "runs/byol/model", "--dataset", "digits", "--out", "o"), "no such model folder"),
        (("demo", "--epochs", "0", "--out", "o"), "argument --epochs: expected an integer >= 1, got 0"),
        (("score", "--model", "org/m", "--dataset", "digits", "--out", "o", "--flag-lowest", "-5"),
         "argument --flag-lowest: expected an integer >= 0, got -5"),
        (("demo", "--dataset", "fashion"), "argument --dataset: invalid choice: 'fashion'"),
        (("convert", "--checkpoint", "x.pth", "--out", "o", "--format", "bogus"), "argument --format: invalid choice"),
        (("explain", "--model", "org/m", "--dataset", "fashion-mnist", "--out", "o"), "did you mean fashion_mnist?"),
    ],
)
def test_argument_errors_come_before_torch(args, message):
    code, error, imported = cli(*args)
    assert code in (1, 2) and message in error
    assert error.strip().splitlines()[-1].startswith(f"qscore-hf {args[0]}: error: ")
    assert imported == []


def test_choices_copied_for_the_parsers_agree_with_the_library():
    from qscore_hf import cli as cli_module
    from qscore_hf.convert.layouts import FORMAT_ALIASES, FORMATS
    from qscore_hf.demo import METHOD_NAMES
    from qscore_hf.probe import OPTIMIZERS
    from qscore_hf.scoring import STATS_SOURCES
    from qscore_hf.ssl import METHODS

    assert cli_module._STATS_SOURCES == STATS_SOURCES
    assert cli_module._PROBE_OPTIMIZERS == OPTIMIZERS
    assert list(cli_module._CONVERT_FORMATS) == [*FORMATS, *FORMAT_ALIASES]
    assert list(METHOD_NAMES) == sorted(METHODS)


def test_eps_is_checked_by_the_library_rule():
    code, error, imported = cli("score", "--model", "org/m", "--dataset", "digits", "--out", "o", "--eps", "-1")
    assert code == 2 and "argument --eps: eps must be" in error
    assert "torch" not in imported  # the rule lives in qscore_hf.eps, which imports no torch (bench/startup.py)


def test_typo_of_a_built_in_name_is_caught_before_the_hub(monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(data.datasets, "load_dataset", no_hub)
    started = time.perf_counter()
    for typo, meant in (("digts", "digits"), ("Digits", "digits"), ("fashion-mnist", "fashion_mnist"),
                        ("fashionmnist", "fashion_mnist"), ("cifar-10", "cifar10")):  # fmt: skip
        with pytest.raises(ValueError, match=f"unknown data set '{typo}': did you mean {meant}\\?"):
            load_image_dataset(typo)
    assert time.perf_counter() - started < 1.0
    # names that extend a built-in one, or are far from all of them, may be Hub data sets: no suggestion
    for name in ("cifar100", "mnist", "beans", "org/digts", "imagenet-1k"):
        check_dataset_name(name)


def test_hub_id_without_network_fails_at_once_without_retries(monkeypatch):
    # A machine without network: the Hub's host name does not resolve. huggingface_hub would retry five times.
    import socket

    from huggingface_hub import constants

    resolved = []

    def no_dns(host, *args, **kwargs):
        resolved.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(data.datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(data.datasets, "load_dataset", no_hub)
    with pytest.raises(ValueError, match="Hub is unreachable.*does not resolve.*HF_HUB_OFFLINE=1") as info:
        load_image_dataset("someorg/pets", "train")
    assert "\n" not in str(info.value) and resolved == ["huggingface.co"]

    # offline mode: no resolution; datasets is asked (and reads its cache)
    asked = []

    def not_cached(path, *args, **kwargs):
        asked.append(path)
        raise FileNotFoundError("not in the cache")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(data.datasets, "load_dataset", not_cached)
    with pytest.raises(ValueError, match="reachable on the Hugging Face Hub"):
        load_image_dataset("someorg/pets", "train")
    assert asked == ["someorg/pets"] and resolved == ["huggingface.co"]


def test_demo_notice_on_digits_says_why_and_how_to_get_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    notice = dataset_notice("auto", "digits")
    assert notice.startswith("Data set: scikit-learn's digits")
    assert f"Fashion-MNIST is not installed (no IDX files in {tmp_path})" in notice
    assert "too few for the AUROCs below to mean much" in notice
    assert "sudo apt-get install dataset-fashion-mnist" in notice and "--dataset cifar10" in notice
    assert "as asked (--dataset digits)" in dataset_notice("digits", "digits")
    assert dataset_notice("auto", "fashion_mnist") == f"Data set: Fashion-MNIST, read from {tmp_path}."


def test_every_demo_data_set_has_a_setting():
    for name in DATASET_CHOICES[1:]:
        assert demo_setting(name).epochs >= 1


def test_getting_started_gives_the_demo_and_the_fashion_mnist_command():
    from qscore_hf.demo import INSTALL_FASHION_MNIST

    page = (ROOT / "docs" / "getting-started.md").read_text()
    assert INSTALL_FASHION_MNIST in page and "```bash\nqscore-hf demo\n```" in page
    assert "python training/pretrain.py --help" in (ROOT / "docs" / "guides" / "pretrain.md").read_text()


def test_pretrain_without_arguments_ends_with_the_useful_line():
    """What the README promises for `python training/pretrain.py`: the last line says what is missing."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "training/pretrain.py"], cwd=ROOT, env=environment, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("pretrain.py: error: the following arguments are required: --method")
