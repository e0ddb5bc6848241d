"""Every entry point (the `qscore-hf` commands and the training scripts) refuses a numeric option outside its range in
one line, and names the missing extra in one line on the base install."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qscore_hf import cli
from qscore_hf.arguments import RangedNumber

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...]):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*prefix, name))


def _parsers(training_script):
    """(how to parse argv, the words before the options, the parser) of every command and script."""
    for command in cli._COMMANDS:
        parser = cli._build_parser(command)
        for words, sub in _subparsers(parser, ()):
            if words and words[0] == command:
                yield parser, words, sub
    for name in ("pretrain", "linear_eval"):
        parser = training_script(name).build_parser()
        yield parser, (), parser


def _numeric_options(training_script):
    for parser, words, sub in _parsers(training_script):
        for action in sub._actions:
            if action.option_strings and action.type is not None:
                yield parser, words, action


def test_no_numeric_option_is_unbounded(training_script):
    bare = [f"{' '.join(words) or parser.prog} {action.option_strings[0]}"
            for parser, words, action in _numeric_options(training_script) if action.type in (int, float)]
    assert not bare, f"numeric options without a range (use qscore_hf.arguments): {bare}"


def _outside(kind: RangedNumber) -> list[str]:
    values = []
    if kind.low is not None:
        values.append(str(kind.low if kind.low_open else kind.low - 1))
    if kind.high is not None:
        values.append(str(kind.high if kind.high_open else kind.high + 1))
    return values + ["nan" if kind.kind is float else "1.5"]


def test_every_numeric_option_refuses_values_outside_its_range_in_one_line(training_script, capsys):
    checked = []
    for parser, words, action in _numeric_options(training_script):
        if not isinstance(action.type, RangedNumber):
            continue
        flag = action.option_strings[0]
        for value in _outside(action.type):
            with pytest.raises(SystemExit) as exit:
                parser.parse_args([*words, flag, value])
            assert exit.value.code == 2
            last = capsys.readouterr().err.rstrip("\n").splitlines()[-1]
            assert f"error: argument {flag}: expected " in last and last.endswith(f"got {value}"), last
            checked.append(f"{' '.join(words)} {flag} {value}")
    # the options the issue named, and enough of the rest
    assert "score --flag-lowest -1" in checked and " --batch-size 0" in checked and len(checked) > 60


def test_flag_lowest_minus_five_is_refused_by_the_command_line(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["score", "--model", "m", "--dataset", "digits", "--out", "o", "--flag-lowest", "-5"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "qscore-hf score: error: argument --flag-lowest: expected an integer >= 0, got -5"
    )
    parsed = cli._build_parser("score").parse_args(["score", "--model", "m", "--dataset", "d", "--out", "o",
                                                    "--flag-lowest", "0", "--batch-size", "1"])  # the bounds are in
    assert (parsed.flag_lowest, parsed.batch_size) == (0, 1)


# A base install: the `train` extra's packages cannot be imported.
WITHOUT_TRAIN_EXTRA = """
import runpy, sys

class BlockTrainExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightly", "tensorboard", "yaml"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, BlockTrainExtra())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_without_train_extra(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", WITHOUT_TRAIN_EXTRA, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_pretraining_script_names_the_train_extra_in_one_line():
    run = _run_without_train_extra("training/pretrain.py", "--method", "simclr", "--dataset", "digits",
                                   "--output-dir", "runs/never")  # fmt: skip
    assert run.returncode == 1
    assert run.stderr == (
        'pretrain.py: error: this command needs the `train` extra (lightly is not installed): '
        'pip install "qscore-hf[train]"\n'
    )
    assert not (ROOT / "runs" / "never").exists()


def test_linear_evaluation_needs_no_extra():
    run = _run_without_train_extra("training/linear_eval.py", "--help")
    assert run.returncode == 0, run.stderr
    assert "usage: linear_eval.py" in run.stdout


@pytest.mark.parametrize("entry", ["qscore-hf", "training/linear_eval.py"])
def test_a_launched_command_ends_its_process_group(entry, tmp_path, capsys):
    """Under `accelerate launch` a command's process group must be destroyed before the interpreter exits: left to
    the exit, gloo's threads aborted a multi-process `score` that had written everything (SIGABRT, exit -6), about
    once in three runs. Here a one-process gloo group stands in for the launch, and the command fails on its data."""
    import importlib.util

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        args = ["--model", str(tmp_path / "no-model"), "--dataset", str(tmp_path / "no-data"), "--out", str(tmp_path / "o")]
        if entry == "qscore-hf":
            assert cli.main(["score", *args]) == 1
        else:
            spec = importlib.util.spec_from_file_location("linear_eval_script", ROOT / entry)
            script = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(script)
            with pytest.raises((ValueError, OSError)):
                script.main(args)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
