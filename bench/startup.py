"""What an argument error of ``qscore-hf`` costs, against ``import torch``, same process, same machine.

    python bench/startup.py [--repeats 7] [--out bench/results/startup_cpu.json]

Each command line below is a mistake a user makes (an unknown option, a value out of range, a misspelt data set
name); each runs as a fresh ``python -m qscore_hf.cli`` process (what the ``qscore-hf`` script runs), interleaved with
a fresh ``python -c "import torch"``, and the best of ``--repeats`` rounds of each is kept. The CLI checks its
arguments before importing torch, transformers or datasets, so each error should cost well under half of
``import torch``. The ratios (error / import torch) and the largest one are printed last.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import environment, save

# name -> the arguments of `qscore-hf`; every one must fail with a one-line usage error
CASES = {
    "score missing options": ["score", "--flag-lowest", "-5"],
    "score unknown option": ["score", "--model", "m", "--dataset", "digits", "--out", "{out}", "--eps", "2", "--bogus"],
    "score flag-lowest out of range": ["score", "--model", "m", "--dataset", "digits", "--out", "{out}", "--flag-lowest",
                                       "-5"],
    "score eps out of range": ["score", "--model", "m", "--dataset", "digits", "--out", "{out}", "--eps", "-1"],
    "score misspelt data set": ["score", "--model", "m", "--dataset", "digts", "--out", "{out}"],
    "demo bad number": ["demo", "--epochs", "three"],
    "convert unknown format": ["convert", "--checkpoint", "x.pth", "--format", "nope", "--out", "{out}"],
    "zoo build unknown option": ["zoo", "build", "--bogus"],
}


def run_once(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - start, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="rounds; the best of each is kept (default 7)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    out = str(Path(tempfile.mkdtemp(prefix="qscore-startup-")) / "out")  # never written: every command fails first
    commands = {"import torch": [sys.executable, "-c", "import torch"]}
    for name, arguments in CASES.items():
        commands[name] = [sys.executable, "-m", "qscore_hf.cli", *(a.format(out=out) for a in arguments)]
    times: dict[str, list[float]] = {name: [] for name in commands}
    errors: dict[str, str] = {}
    for _ in range(args.repeats):  # interleaved rounds: a drift in the machine's speed touches every figure alike
        for name, command in commands.items():
            seconds, done = run_once(command)
            times[name].append(seconds)
            if name != "import torch":
                if done.returncode == 0:
                    raise SystemExit(f"{name}: `qscore-hf {' '.join(command[3:])}` succeeded; it must be an error")
                errors[name] = done.stderr.strip().splitlines()[-1]
    best = {name: min(values) for name, values in times.items()}
    torch_s = best.pop("import torch")
    ratios = {name: seconds / torch_s for name, seconds in best.items()}
    result = {
        **environment("startup"),
        "repeats": args.repeats,
        "import_torch_s": torch_s,
        "argument_error_s": best,
        "ratio_to_import_torch": ratios,
        "max_ratio": max(ratios.values()),
        "errors": errors,
    }
    save(result, args.out)
    for name, ratio in ratios.items():
        print(f"{name}: {best[name]:.3f} s = {ratio:.2f} x import torch ({torch_s:.3f} s)")
    print(f"largest ratio of an argument error to import torch: {result['max_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
