"""How the suite runs each shell command of the README and the documentation (tests/test_docs_contract.py).

Every command of a ```bash block has an entry here; a page that gains a command without one fails the suite. The
value says how it runs:
- ``CI``: .ci/run runs it as typed (the README's install and test commands, marked ``<!-- ci: ROLE -->``);
- ``Run(...)``: the contract test runs it as typed, with the defaults a user gets (trackers, progress bars, workers),
  in the page's order in a scratch copy of the checkout; ``shrink`` appends flags that only shrink data or steps;
- ``Covered(test, why)``: a named test runs it, where it needs something a scratch folder cannot give (a mocked Hub).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Run:
    shrink: str = ""  # flags appended to the command: data and step counts only
    env: dict[str, str] = field(default_factory=dict)  # documented environment variables
    expect: str = ""  # a text the command's output must contain
    timeout: int = 600


@dataclass(frozen=True)
class Covered:
    test: str  # tests/<file>.py::<function>
    why: str


CI = "ci"

# Data and step counts only: a few hundred images, a few steps, the kNN monitor on a few hundred images.
_SMALL_RUN = "--max-steps 2 --max-samples 256 --batch-size 32 --knn-max-train 256 --knn-max-eval 256"

COMMANDS: dict[str, Run | Covered | str] = {
    # README, Install
    'pip install -e ".[test]"': CI,
    "pytest -q": CI,
    # README, Pre-train or fine-tune: the CPU-sized run exactly as typed, then the recipe on a few images
    "accelerate launch --cpu --num_processes 1 training/pretrain.py --method simclr --dataset digits --max-steps 3 "
    "--batch-size 16 --qscore-reg --output-dir runs/smoke": Run(expect="saved the pre-trained QScoreModel to runs/smoke/model"),
    "accelerate launch training/pretrain.py --method byol --dataset fashion_mnist --backbone resnet18_cifar --epochs 100 "
    "--batch-size 256 --qscore-reg --output-dir runs/byol-qreg": Run(shrink=_SMALL_RUN),
    "python training/linear_eval.py --model runs/byol-qreg/model --dataset fashion_mnist --out runs/byol-qreg/eval":
        Run(shrink="--max-samples 256 --epochs 2", expect="runs/byol-qreg/eval/report.json"),
    # docs/guides/distributed-scoring.md: the CPU command (the GPU ones are no-run)
    "OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 -m qscore_hf.cli score --model ./my-model "
    "--dataset cifar10 --split test --out scores": Covered(
        "tests/test_sharded_scoring.py::test_two_gloo_processes_equal_one_process",
        "launches it with a saved random encoder on a CIFAR-10 subset (a scratch folder has no ./my-model)",
    ),
}
