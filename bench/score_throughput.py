"""Scoring throughput: ``QScoreModel`` features + per-sample Q-Scores vs the bare backbone forward, in one process.

    python bench/score_throughput.py [--backbone resnet50] [--image-size 224] [--batch-size 64] [--device cuda]
    python bench/score_throughput.py --backbone vit_small_patch16_224          # a timm ViT
    python bench/score_throughput.py --library transformers --backbone vit    # a transformers ViT-S/16 (CLS token)

Both run the same backbone on the same batch at the same precision (bf16 autocast on a GPU, float32 on a CPU),
channels-last, in eval mode without gradients; ``QScoreModel`` also scores the batch against saved activation
statistics. The bare forward of a transformers ViT is ``model(pixel_values).last_hidden_state[:, 0]``. Timings
alternate between the two and the medians are compared. The ratio (images/s of QScoreModel over images/s of the
bare backbone; target >= 0.95) is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from transformers import AutoModel, ViTConfig

from _record import environment, save
from qscore_hf import QScoreConfig, QScoreModel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", help="timm name, or 'vit' with --library transformers")
    parser.add_argument("--library", choices=("timm", "transformers"), default="timm")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    torch.manual_seed(0)
    if args.library == "transformers":
        if args.backbone != "vit":
            parser.error("--library transformers benchmarks --backbone vit (a ViT-S/16: width 384, 12 blocks, 6 heads)")
        vit = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        image_size=args.image_size, patch_size=16)  # fmt: skip
        config = QScoreConfig(backbone="vit", backbone_library="transformers", backbone_config=vit.to_dict(),
                              image_size=args.image_size)  # fmt: skip
        model = QScoreModel(config).eval()
        hf_model = AutoModel.from_config(vit).eval()
        hf_model.load_state_dict(model.backbone.model.state_dict())

        class Bare(torch.nn.Module):  # the plain transformers forward and the CLS token, nothing else
            def __init__(self) -> None:
                super().__init__()
                self.model = hf_model

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]

        bare = Bare().eval()
    else:
        model = QScoreModel(QScoreConfig(backbone=args.backbone, image_size=args.image_size)).eval()
        bare = timm.create_model(args.backbone, pretrained=False, num_classes=0).eval()
        bare.load_state_dict(model.backbone.state_dict())
    width = model.config.hidden_size
    model.activation_stats.update(torch.rand(4096, width) ** 4)  # saved statistics, so D is a proper subset
    model, bare = (m.to(device).to(memory_format=torch.channels_last) for m in (model, bare))
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    pixels = pixels.contiguous(memory_format=torch.channels_last)

    def run_ours() -> None:
        with torch.no_grad(), autocast():
            model(pixels)

    def run_bare() -> None:
        with torch.no_grad(), autocast():
            bare(pixels)

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    for _ in range(2):
        run_ours(), run_bare()
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(timed(run_ours))
        theirs.append(timed(run_bare))
    t_ours, t_bare = statistics.median(ours), statistics.median(theirs)
    result = {
        **environment("score_throughput", device),
        "backbone": args.backbone,
        "library": args.library,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "qscoremodel_images_per_s": args.batch_size / t_ours,
        "bare_backbone_images_per_s": args.batch_size / t_bare,
        "ratio": t_bare / t_ours,
    }
    save(result, args.out)
    print(f"QScoreModel (features + Q-Score) vs bare {args.library} forward, images/s: {result['ratio']:.3f} "
          "(target >= 0.95)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
