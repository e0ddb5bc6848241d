"""Two ways to fuse the score pass: ``torch.compile`` of SPEC §2-4 against the package's numba kernel, same process.

    python bench/qscore_fused.py [--rows 50000] [--dim 2048] [--out bench/results/qscore_fused_cpu.json]

On the CPU ``qscore_hf.qscore`` scores with a numba kernel (qscore_hf/fused.py), or with eager tensor operations
(about eight per cache-sized chunk) under ``QSCORE_HF_FUSED=0``. Inductor fuses the same formula (mean, deviation
norm, threshold, sums over S_i ∩ D; without the package's exactness checks and scaled path) on its own. All three
are timed in interleaved rounds against one read pass over the features (a sum), and Inductor's compile time of the
first call is reported: this is why the package compiles its kernel with numba, not with ``torch.compile``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# A first call in a fresh Inductor cache, as a user's first call would be (set before torch is imported).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="qscore-fused-"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _record import environment, save  # noqa: E402
from qscore_speed import interleaved_best, on_path  # noqa: E402
from qscore_hf import ActivationStats, qscore  # noqa: E402


def spec_qscore(features: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """SPEC §2-4 (``normalize="none"``) in a form Inductor fuses; ``mask`` is D as 0/1."""
    mu = features.mean(dim=1, keepdim=True)
    deviation = features - mu
    sigma = deviation.pow(2).mean(dim=1, keepdim=True).sqrt()
    selected = (deviation > eps * sigma) & (mask > 0)
    count = selected.sum(dim=1)
    total = torch.where(selected, deviation, 0).sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--eps", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    features = torch.from_numpy(np.maximum(rng.standard_normal((args.rows, args.dim), dtype=np.float32), 0) ** 3)
    discriminative = ActivationStats(args.dim, args.eps).update(features[:10_000]).discriminative_mask()
    mask = discriminative.float()

    compiled = torch.compile(spec_qscore, dynamic=True)
    start = time.perf_counter()
    fused = compiled(features, mask, args.eps)
    compile_s = time.perf_counter() - start
    eager = on_path(False, lambda: qscore(features, discriminative, args.eps))
    numba = on_path(True, lambda: qscore(features, discriminative, args.eps))
    differing = int((~torch.isclose(fused.double(), eager().double(), rtol=1e-4, atol=0)).sum())
    numba()  # the kernel's compilation or cache load

    best = interleaved_best(args.repeats, {
        "read_pass": lambda: features.sum(),
        "eager": eager,
        "numba": numba,
        "fused": lambda: compiled(features, mask, args.eps),
    })  # fmt: skip
    result = {
        **environment("qscore_fused", torch.device("cpu")),
        "rows": args.rows,
        "dim": args.dim,
        "read_pass_s": best["read_pass"],
        "eager_s": best["eager"],
        "numba_s": best["numba"],
        "fused_s": best["fused"],
        "eager_passes": best["eager"] / best["read_pass"],
        "numba_passes": best["numba"] / best["read_pass"],
        "fused_passes": best["fused"] / best["read_pass"],
        "first_call_with_compile_s": compile_s,
        # None when the fused kernel is not faster: the compile is never repaid.
        "calls_to_repay_compile": compile_s / saving if (saving := best["eager"] - best["fused"]) > 0 else None,
        "rows_differing": differing,
    }
    save(result, args.out)
    print(f"read passes: qscore eager {result['eager_passes']:.1f}, qscore numba kernel {result['numba_passes']:.1f}, "
          f"torch.compile {result['fused_passes']:.1f}")
    repaid = result["calls_to_repay_compile"]
    print(f"first fused call (compiles): {compile_s:.1f} s, "
          + (f"repaid after {repaid:.0f} calls" if repaid is not None else "never repaid"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
