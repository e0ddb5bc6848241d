"""GPU cost of ``qscore-hf zoo build NAME --qreg-finetune DATASET`` per release: an estimate from counted FLOPs.

    OMP_NUM_THREADS=1 python bench/zoo_finetune_cost.py [--releases a,b] [--batch-size 2] [--repeats 3]
                                                        [--out bench/results/zoo_finetune_cost_cpu.json]

Per release, one training step of the fine-tune (``qscore_hf.zoo.finetune.qreg_finetune``'s ``PretrainConfig``:
the release's SSL method, its crop as image size, Q-reg on) is built as ``pretrain`` builds it, with random backbone
weights (nothing is downloaded): the release's backbone, the method's heads and momentum/teacher copies, its
transform's views (no multi-crop: ``local_views`` is 0 by default), the regularizer and LARS. Then:

1. the FLOPs of the step (forward of every view, teacher/momentum forward, heads, loss, Q-reg, backward), counted
   with ``torch.utils.flop_counter.FlopCounterMode`` at ``B`` and ``B + 1`` images: the difference gives the FLOPs per
   image, the rest the FLOPs every step spends whatever its batch (SwAV's queue); per image at the recipe's batch of
   256 is the sum of the first and the second over 256. CPU attention (``scaled_dot_product_attention``) is counted
   with torch's formulas for the GPU kernels;
2. the CPU time of the step at ``B`` images, per image: wall and process CPU seconds (median of ``--repeats`` steps,
   fewer when a step is slow; the first, counted step is the warm-up);
3. the recipe's cost (50 epochs over ImageNet-1k's 1,281,167 training images): FLOPs, CPU core-hours from the step's
   process CPU time (a busy machine's wall time is not the step's),
   and GPU-hours = FLOPs / an assumed sustained bf16 throughput (200, 400 and 600 TFLOP/s; an H100 SXM's dense bf16
   peak is about 989 TFLOP/s; the sustained rate of this code on a GPU is not measured here). Per epoch too.
Not counted: data loading and augmentation, elementwise ops (normalisation, activations, EMA, optimizer), and the
passes besides training (activation statistics, kNN monitor, linear probes); the backbone's forward FLOPs per image,
the unit of those passes, are recorded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from _record import environment, save
from qscore_hf.modeling_qscore import QScoreModel
from qscore_hf.pretraining import _collate_views, build_optimizer, build_regularizer, training_step
from qscore_hf.ssl import TransformSettings, build_method
from qscore_hf.zoo.card import config_from_release
from qscore_hf.zoo.finetune import RECIPE, FinetuneSettings, finetune_config
from qscore_hf.zoo.registry import Release, load_registry

IMAGENET_TRAIN_IMAGES = 1_281_167
THROUGHPUTS_TFLOPS = (200, 400, 600)  # assumed sustained bf16 rates; not measured
H100_SXM_BF16_PEAK_TFLOPS = 989  # dense, for reference
# On a CPU, scaled_dot_product_attention runs kernels FlopCounterMode has no formula for: use the GPU kernels' ones
# (``__wrapped__``: the formulas on shapes, which FlopCounterMode wraps itself).
_aten = torch.ops.aten
CPU_ATTENTION = {
    _aten._scaled_dot_product_flash_attention_for_cpu: flop_counter.sdpa_flop.__wrapped__,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: flop_counter.sdpa_backward_flop.__wrapped__,
}


def count_flops(step: Callable[[], Any]) -> int:
    """The FLOPs (2 per multiply-add of matmuls, convolutions and attention) ``step`` runs, backward included."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        step()
    return counter.get_total_flops()


def split_per_image(flops_small: int, flops_large: int, small: int, large: int) -> tuple[float, float]:
    """(FLOPs per image, FLOPs per step that do not depend on the batch) from a step's count at two batch sizes."""
    per_image = (flops_large - flops_small) / (large - small)
    return per_image, flops_small - per_image * small


def estimate(flops_per_image: float, cpu_s_per_image: float, images: int, epochs: int) -> dict[str, Any]:
    """FLOPs, CPU-hours and GPU-hours (per assumed throughput) of ``epochs`` epochs over ``images`` images."""
    seen = images * epochs
    flops = flops_per_image * seen
    return {
        "images": images, "epochs": epochs, "flops": flops, "cpu_hours": cpu_s_per_image * seen / 3600,
        "gpu_hours": {str(t): flops / (t * 1e12) / 3600 for t in THROUGHPUTS_TFLOPS},
    }  # fmt: skip


class FinetuneStep:
    """One training step of ``qreg_finetune``'s run, built with pre-training's builders (random backbone weights)."""

    def __init__(self, release: Release, output_dir: str) -> None:
        self.cfg = cfg = finetune_config(release, FinetuneSettings(dataset="imagenet-1k"), output_dir)
        torch.manual_seed(0)
        model = QScoreModel(config_from_release(release))  # what `zoo build` writes, without the weights
        width = int(model.config.hidden_size)
        self.method = build_method(cfg.method, model.backbone, width, **cfg.method_kwargs)
        settings = TransformSettings(cfg.image_size, tuple(model.config.image_mean), tuple(model.config.image_std),
                                     cfg.local_views)  # fmt: skip
        self.transform = self.method.build_transform(settings)
        self.regularizer = build_regularizer(cfg, width)
        self.optimizer = build_optimizer(cfg, self.method, lr=cfg.lr)  # the rate does not change the FLOPs
        if cfg.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.backbone = model.backbone
        # The steady state: epoch 1 of the recipe (SwAV's queue is in use, DINO's last layer trains).
        self.steps_per_epoch = IMAGENET_TRAIN_IMAGES // cfg.batch_size
        self.max_steps = cfg.epochs * self.steps_per_epoch
        self.resize = release.resize

    def views(self, batch_size: int) -> list[Tensor]:
        """A batch of the method's views of random images, collated as the training loader collates them."""
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (self.resize, self.resize, 3), dtype=np.uint8))
                  for _ in range(batch_size)]  # fmt: skip
        views = _collate_views([{"views": self.transform(image)} for image in images])
        if self.cfg.channels_last:
            views = [view.contiguous(memory_format=torch.channels_last) for view in views]
        return views

    def __call__(self, views: list[Tensor]) -> None:
        """Forward, loss with Q-reg, backward, DINO's hook and the optimizer step, as in ``pretrain``'s loop."""
        epoch = 1
        out = training_step(self.method, self.regularizer, views, epoch * self.steps_per_epoch, self.max_steps, epoch)
        out.loss.backward()
        self.method.after_backward(epoch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def forward_flops(self) -> int:
        """FLOPs of the backbone's forward of one image at the crop (statistics and probes' feature passes)."""
        x = torch.randn(1, 3, self.cfg.image_size, self.cfg.image_size)
        self.backbone.eval()
        with torch.no_grad():
            flops = count_flops(lambda: self.backbone(x))
        self.backbone.train()
        return flops


def _timed(step: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process CPU seconds of ``step`` (the second is robust to other jobs on a busy machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(release: Release, args: argparse.Namespace, output_dir: str) -> dict[str, Any]:
    """Counted FLOPs, CPU time and the recipe's estimates for one release."""
    step = FinetuneStep(release, output_dir)
    small, large = args.batch_size, args.batch_size + 1
    views = step.views(small)
    counted: list[int] = []
    warm_up = _timed(lambda: counted.append(count_flops(lambda: step(views))))  # the first step: the warm-up
    # A slow step is timed fewer times; with none left, the counted step's time stands (the counter's overhead is
    # per op, small against a slow step's).
    repeats = min(args.repeats, int(args.timing_budget_s // warm_up[0]))
    times = [_timed(lambda: step(views)) for _ in range(repeats)] or [warm_up]
    per_image, per_step = split_per_image(counted[0], count_flops(lambda: step(step.views(large))), small, large)
    batch = step.cfg.batch_size
    flops_per_image = per_image + per_step / batch
    wall_s, cpu_s = (statistics.median(t[k] for t in times) / small for k in (0, 1))
    return {
        "method": release.method, "ssl_method": step.cfg.method, "arch": release.arch,
        "image_size": step.cfg.image_size,
        "views": [list(view.shape[1:]) for view in views],
        "flops_per_image_marginal": per_image, "flops_per_step_constant": per_step,
        "recipe_batch_size": batch, "flops_per_image": flops_per_image,
        "forward_flops_per_image": step.forward_flops(),
        "timed_steps": {"batch_size": small, "wall_s": [t[0] for t in times], "process_cpu_s": [t[1] for t in times],
                        "counted_warm_up_only": repeats == 0},
        "wall_s_per_image": wall_s, "cpu_s_per_image": cpu_s,
        "per_epoch": estimate(flops_per_image, cpu_s, IMAGENET_TRAIN_IMAGES, 1),
        "recipe": estimate(flops_per_image, cpu_s, IMAGENET_TRAIN_IMAGES, RECIPE["epochs"]),
    }  # fmt: skip


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The markdown table of the per-release estimates."""
    rates = "/".join(str(t) for t in THROUGHPUTS_TFLOPS)
    lines = [
        f"| release | method | GFLOP/image/step | CPU s/image wall | CPU core-s/image | PFLOP/epoch | "
        f"GPU-h/epoch @400 | GPU-h {RECIPE['epochs']} ep @{rates} TFLOP/s | CPU core-h {RECIPE['epochs']} ep |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        hours = "/".join(f"{row['recipe']['gpu_hours'][str(t)]:.1f}" for t in THROUGHPUTS_TFLOPS)
        lines.append(
            f"| {name} | {row['ssl_method']} | {row['flops_per_image'] / 1e9:.1f} | {row['wall_s_per_image']:.2f} | "
            f"{row['cpu_s_per_image']:.2f} | {row['per_epoch']['flops'] / 1e15:.0f} | "
            f"{row['per_epoch']['gpu_hours']['400']:.2f} | {hours} | "
            f"{row['recipe']['cpu_hours']:,.0f} |"
        )  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", default=None, help="comma-separated release names (default: all)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per counted and timed step (and one more)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per release, after the warm-up")
    parser.add_argument("--timing-budget-s", type=float, default=20.0, help="fewer timed steps when a step is slow")
    parser.add_argument("--out", type=Path, default=Path("bench/results/zoo_finetune_cost_cpu.json"))
    args = parser.parse_args()
    registry = load_registry()
    names = args.releases.split(",") if args.releases else list(registry)

    result = {
        **environment("zoo_finetune_cost"),
        "settings": {"batch_size": args.batch_size, "repeats": args.repeats, "timing_budget_s": args.timing_budget_s,
                     "recipe": RECIPE, "recipe_batch_size": FinetuneSettings.batch_size,
                     "images": IMAGENET_TRAIN_IMAGES, "throughputs_tflops": THROUGHPUTS_TFLOPS,
                     "h100_sxm_bf16_dense_peak_tflops": H100_SXM_BF16_PEAK_TFLOPS},  # fmt: skip
        "note": "GPU-hours are estimates: counted FLOPs over an assumed sustained bf16 throughput, not a GPU "
        "measurement; CPU-hours come from the step time measured here (fp32, random weights, random images).",
        "releases": {},
    }
    with tempfile.TemporaryDirectory() as output_dir:
        for name in names:
            row = measure(registry[name], args, output_dir)
            result["releases"][name] = row
            print(f"{name}: {row['flops_per_image'] / 1e9:.1f} GFLOP/image, {row['wall_s_per_image']:.2f} s/image "
                  f"wall, {row['cpu_s_per_image']:.2f} core-s/image ({len(row['timed_steps']['wall_s'])} timed)",
                  flush=True)  # fmt: skip
    save(result, args.out)
    print()
    print(table(result["releases"]))
    print(
        f"\nGPU-hours = FLOPs / sustained throughput, assumed {', '.join(map(str, THROUGHPUTS_TFLOPS))} TFLOP/s bf16 "
        f"(an H100 SXM's dense bf16 peak is about {H100_SXM_BF16_PEAK_TFLOPS} TFLOP/s; the real sustained rate is "
        f"unmeasured here). {RECIPE['epochs']} epochs x {IMAGENET_TRAIN_IMAGES:,} ImageNet-1k images; per epoch "
        "figures scale to other data by its number of images."
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
