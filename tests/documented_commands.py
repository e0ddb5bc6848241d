"""How the suite runs each shell command of the README and the documentation (tests/test_docs_contract.py).

Every command of a ```bash block has an entry here; a page that gains a command without one fails the suite. The
value says how it runs:
- ``CI``: .ci/run runs it as typed (the README's install and test commands, marked ``<!-- ci: ROLE -->``);
- ``Run(...)``: tests/test_documented_commands.py runs it as typed, with the defaults a user gets (trackers, progress
  bars, workers), in the pages' order in a scratch clone; ``shrink`` appends flags that only shrink data or steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Run:
    shrink: str = ""  # flags appended to the command: data and step counts only
    env: dict[str, str] = field(default_factory=dict)  # documented environment variables
    expect: str = ""  # a text the command's output must contain
    timeout: int = 600


CI = "ci"

# Data and step counts only: 64 images, one step, the kNN monitor on 64 images.
_SMALL_RUN = "--max-steps 1 --max-samples 64 --batch-size 16 --knn-max-train 64 --knn-max-eval 64"

COMMANDS: dict[str, Run | str] = {
    # README, Install
    'pip install -e ".[test]"': CI,
    "pytest -q": CI,
    # README, Pre-train or fine-tune: the CPU-sized run exactly as typed, then the recipe on a few images
    "accelerate launch --cpu --num_processes 1 training/pretrain.py --method simclr --dataset digits --max-samples 256 "
    "--max-steps 3 --batch-size 16 --qscore-reg --output-dir runs/smoke":
        Run(expect="saved the pre-trained QScoreModel to runs/smoke/model"),
    "accelerate launch training/pretrain.py --method byol --dataset fashion_mnist --backbone resnet18_cifar --epochs 100 "
    "--batch-size 256 --qscore-reg --output-dir runs/byol-qreg": Run(shrink=_SMALL_RUN),
    "python training/linear_eval.py --model runs/byol-qreg/model --dataset fashion_mnist --out runs/byol-qreg/eval":
        Run(shrink="--max-samples 64 --epochs 2", expect="runs/byol-qreg/eval/report.json"),
    # docs/getting-started.md: the demo, on its few-second sizes (--quick: fewer images and epochs, the same run)
    "qscore-hf demo": Run(shrink="--quick", expect="AUROC"),
    # docs/guides: score, explain, cards and distributed scoring start from the README's run above (it runs once)
    "qscore-hf score --model runs/smoke/model --dataset digits --split test --out scores --probe --flag-lowest 16":
        Run(expect="probe accuracy"),
    "qscore-hf explain --model runs/smoke/model --dataset digits --split test --max-samples 16 --out explain": Run(),
    "python training/linear_eval.py --model runs/smoke/model --dataset digits --out runs/smoke/eval":
        Run(shrink="--max-samples 128 --epochs 10"),
    "qscore-hf card --results runs/smoke/eval/report.json --out runs/smoke/card/README.md --license apache-2.0":
        Run(expect="wrote runs/smoke/card/README.md"),
    "qscore-hf zoo list": Run(expect="dino-vits16"),
    # docs/guides/pretrain.md: the baseline, then the published fine-tuning recipe from it
    "accelerate launch training/pretrain.py --method byol --dataset fashion_mnist --backbone resnet18_cifar --epochs 100 "
    "--batch-size 256 --output-dir runs/byol": Run(shrink=_SMALL_RUN),
    "accelerate launch training/pretrain.py --method byol --dataset fashion_mnist --init-from runs/byol/model --lr 1e-5 "
    "--epochs 50 --qscore-reg --output-dir runs/byol-qreg-ft": Run(shrink=_SMALL_RUN),
    # docs/guides/distributed-scoring.md: the CPU commands on two gloo processes (the GPU ones are no-run)
    "OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 -m qscore_hf.cli score --model runs/smoke/model "
    "--dataset digits --split test --out scores-2p": Run(expect="scored 360 images"),
    "OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 -m qscore_hf.cli score --model runs/smoke/model "
    "--dataset digits --split test --streaming --shard-rows 256 --out scores-2p-streaming": Run(expect="scored 360 images"),
}


# Each entry point keeps one test with every default on (trackers, progress bars, workers): DOCUMENTED where a command
# above runs it as typed (Run), else the test that does; tests/test_docs_contract.py checks the list is complete and
# that those tests switch no default off.
DOCUMENTED = "documented"
ENTRY_POINTS: dict[str, str] = {
    "training/pretrain.py": DOCUMENTED,
    "training/linear_eval.py": DOCUMENTED,
    "qscore-hf demo": DOCUMENTED,
    "qscore-hf score": DOCUMENTED,
    "qscore-hf explain": DOCUMENTED,
    "qscore-hf card": DOCUMENTED,
    "qscore-hf zoo list": DOCUMENTED,
    "qscore-hf info": "tests/test_model_files.py::test_good_folder_still_loads_and_info_prints",
    "qscore-hf convert": "tests/test_convert.py::test_cli_converts_computes_stats_pushes_and_output_loads",
    "qscore-hf zoo build": "tests/test_zoo.py::test_build_all_end_to_end",
    "qscore-hf zoo cards": "tests/test_zoo.py::test_cards_check_fails_on_a_stale_card",
    "qscore-hf publish-metric": "tests/test_metric_space.py::test_publish_command_and_its_checks",
}
