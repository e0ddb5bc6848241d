"""Start-up: `import qscore_hf` and `qscore-hf --help` import nothing heavy, every command starts with the base
install (the `train` extra's lightly absent), and the Auto classes and the evaluate metric are still registered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI as if lightly (the `train` extra) were not installed.
WITHOUT_LIGHTLY = """
import sys

class BlockLightly:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "lightly":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, BlockLightly())
from qscore_hf.cli import main
code = 0
for args in [arg.split() for arg in sys.argv[1:]]:  # each argument: one command line
    try:
        code = main(args) or code
    except SystemExit as exit:  # --help
        code = exit.code or code
heavy = ("torch", "transformers", "lightly", "datasets", "huggingface_hub")
print("IMPORTED", sorted(m for m in heavy if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_help_starts_without_lightly_and_without_torch():
    run = python(WITHOUT_LIGHTLY, "--help")
    assert run.returncode == 0, run.stderr
    for command in ("demo", "info", "convert", "explain", "score", "card"):
        assert f"    {command} " in run.stdout
    assert "IMPORTED []" in run.stderr  # the top-level help imports neither torch nor transformers


def test_every_command_explains_itself_without_lightly():
    commands = ("demo", "info", "convert", "explain", "score", "card")
    run = python(WITHOUT_LIGHTLY, *(f"{command} --help" for command in commands))
    assert run.returncode == 0, run.stderr
    for command in commands:
        assert f"usage: qscore-hf {command}" in run.stdout
    # the demo's help shows its options, then what to install
    assert "--method {byol,dino,moco,simclr,simsiam,swav}" in run.stdout
    demo_help = run.stdout.split("usage: qscore-hf info")[0]
    assert demo_help.rstrip().splitlines()[-1] == (
        'This command needs the `train` extra (lightly is not installed): pip install "qscore-hf[train]"'
    )
    assert "IMPORTED []" in run.stderr  # no torch for any help screen


# Argument errors (bench/startup.py times them against `import torch`): each fails before anything heavy is imported.
ARGUMENT_ERRORS = {
    "score --model m --dataset digits --out o --eps 2 --bogus": "unrecognized arguments: --bogus",
    "score --model m --dataset digits --out o --eps -1": "argument --eps: eps must be a finite number >= 0",
    "score --model m --dataset digts --out o": "unknown data set 'digts': did you mean digits?",
    "explain --model m --dataset fashion-mnist --out o": "unknown data set 'fashion-mnist': did you mean fashion_mnist?",
    "score --model m --dataset digits --out o --flag-lowest -5": "argument --flag-lowest: expected an integer >= 0, got -5",
    "demo --epochs three": "argument --epochs: expected an integer >= 1, got three",
    "zoo build --bogus": "unrecognized arguments: --bogus",
}


@pytest.mark.parametrize("command", ARGUMENT_ERRORS)
def test_an_argument_error_imports_nothing_heavy(command):
    run = python(WITHOUT_LIGHTLY, command)
    assert run.returncode in (1, 2)
    error = run.stderr.split("IMPORTED")[0]
    assert ARGUMENT_ERRORS[command] in error.strip().splitlines()[-1]  # after argparse's usage lines, if any
    assert "IMPORTED []" in run.stderr


def test_a_command_of_the_train_extra_names_it_in_one_line():
    run = python(WITHOUT_LIGHTLY, "demo --quick --out /tmp/qscore-hf-startup-demo")
    assert run.returncode == 1
    error = run.stderr.split("IMPORTED")[0]
    assert error == (
        'qscore-hf demo: error: this command needs the `train` extra (lightly is not installed): '
        'pip install "qscore-hf[train]"\n'
    )


def test_unwritable_out_fails_first_in_one_line():
    run = python(WITHOUT_LIGHTLY, "convert --checkpoint missing.pth --out /proc/qscore-hf/out")
    assert run.returncode == 1
    error = run.stderr.split("IMPORTED")[0]
    assert error.startswith("qscore-hf convert: error: --out /proc/qscore-hf/out: cannot write under /proc")
    assert error.count("\n") == 1


def test_missing_model_folder_is_one_line():
    run = python(WITHOUT_LIGHTLY, "info runs/byol/model")
    assert run.returncode == 1
    assert run.stderr.split("IMPORTED")[0] == (
        "qscore-hf info: error: runs/byol/model: no such model folder (and not a Hub id org/name); check the path.\n"
    )


def test_import_loads_no_optional_stack_and_still_registers(tmp_path):
    code = """
import json, sys
import qscore_hf
heavy = ("evaluate", "datasets", "lightly", "accelerate", "timm", "sklearn", "numba")
eager = sorted(m for m in heavy if m in sys.modules)
import importlib.util
importlib.util.find_spec("transformers.models.auto.modeling_auto")  # a probe, not an import: registers nothing yet
from transformers import AutoConfig, AutoModel
config = AutoConfig.for_model("qscore", backbone="resnet18_cifar", image_size=32)
model = AutoModel.from_config(config)
import evaluate
metric = evaluate.load("qscore")
print(json.dumps({"eager": eager, "model": type(model).__name__, "config": type(config).__name__,
                  "public": qscore_hf.QScoreModel is type(model), "metric": metric.name}))
"""
    run = python(code, env={"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HOME": str(tmp_path / "hf")})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["eager"] == []
    assert (result["model"], result["config"], result["public"]) == ("QScoreModel", "QScoreConfig", True)
    assert result["metric"] == "q_score"


# Each Auto class the way transformers exposes it, and where our registration must be visible.
CHECK_REGISTRATIONS = """
import json, sys
import qscore_hf
import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoModel
modules = {name: sys.modules.get("transformers.models.auto." + name)
           for name in ("configuration_auto", "modeling_auto", "image_processing_auto")}
config = AutoConfig.for_model("qscore", backbone="resnet18_cifar", image_size=32)
print(json.dumps({
    "one_module_each": [module is not None and getattr(transformers, cls) is getattr(module, cls)
                        for cls, module in zip(("AutoConfig", "AutoModel", "AutoImageProcessor"), modules.values())],
    "config": type(config) is qscore_hf.QScoreConfig,
    "model": type(AutoModel.from_config(config)) is qscore_hf.QScoreModel,
    "image_processor": [cls.__name__ for cls in
                        modules["image_processing_auto"].IMAGE_PROCESSOR_MAPPING[type(config)].values()],
}))
"""


@pytest.mark.parametrize("first", [
    "import qscore_hf; from qscore_hf import QScoreImageProcessor",  # imported the Auto model module half-way (was a bug)
    "import qscore_hf; from qscore_hf import QScoreModel",
    "import qscore_hf; from qscore_hf import QScoreConfig",
    "import qscore_hf; from transformers import AutoModel",
    "import qscore_hf; from transformers import AutoImageProcessor",
    "import qscore_hf; import transformers.models.auto.modeling_auto",
    "import transformers.models.auto.modeling_auto; import qscore_hf",
    "from transformers import AutoImageProcessor; from qscore_hf import QScoreImageProcessor",
    "import qscore_hf.pretraining",  # our backbones import transformers half-way (was a bug of the first fix)
    "from qscore_hf.backbones import build_backbone",
])
def test_every_import_order_registers_each_auto_class_once(first):
    """Whatever our modules and transformers' Auto modules are imported in, each Auto class exists once (the class
    transformers exports is the one its module holds) and knows QScoreConfig, QScoreModel and QScoreImageProcessor."""
    run = python(first + "\n" + CHECK_REGISTRATIONS)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["one_module_each"] == [True, True, True]
    assert result["config"] and result["model"]
    assert result["image_processor"] == ["QScoreImageProcessor"]
