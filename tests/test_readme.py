"""The README's quickstart runs as written (in a fresh working directory, offline)."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_quickstart_runs_as_written(tmp_path):
    (quickstart,) = [block for block in python_blocks(README.read_text()) if "QScoreModel(" in block]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", quickstart], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch.Size([512, 512]) torch.Size([512])" in run.stdout
    saved = tmp_path / "qscore-resnet18-digits"
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= {p.name for p in saved.iterdir()}
    # The last line is mean Q, empty fraction and |D|: |D| must be a proper subset of the 512 features.
    mean, empty_fraction, num_discriminative = run.stdout.strip().splitlines()[-1].split()
    assert 0 < int(num_discriminative) < 512
    assert 0.0 <= float(empty_fraction) <= 1.0 and float(mean) >= 0.0
