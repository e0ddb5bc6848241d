"""What every benchmark records beside its figures (command, machine, device, torch), and how it saves them."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch


def environment(benchmark: str, device: torch.device | None = None) -> dict[str, Any]:
    """The header of a result: the benchmark's name, the command that ran it, the machine, device and torch."""
    device = device or torch.device("cpu")
    return {
        "benchmark": benchmark,
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        # A busy machine distorts timings: the 1-minute load average when the benchmark started.
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def save(result: dict[str, Any], out: Path | None) -> None:
    """Write ``result`` as JSON to ``out`` (when given) and print it."""
    text = json.dumps(result, indent=2) + "\n"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text, end="")
