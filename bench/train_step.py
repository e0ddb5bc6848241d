"""Training speed, as ratios measured in one process on one machine.

    python bench/train_step.py [--device cpu|cuda] [--backbone resnet18_cifar] [--image-size 32] [--batch-size 64]
                               [--methods simclr,byol,...] [--steps 20] [--loop-method simclr] [--rounds 3]
                               [--out bench/results/x.json]

1. Per method: the time of one optimization step (forward of two views, loss, backward, optimizer step) with vs
   without Q-Score regularization (SPEC §6) on the same batch; target ratio <= 1.03. Steps with and without
   alternate, so that drifts of the machine hit both alike; the median of each is compared.
2. For one method: images/s of the full pre-training loop (``qscore_hf.pretraining.pretrain``: data loading,
   augmentation, accelerate, logging) vs a minimal lightly-style loop (DataLoader with the same transform, the same
   method, loss, batch and precision; target >= 1.0) and vs the bare backbone's forward+backward on a ready-made
   batch of the same shape (no data; target >= 0.8: is data loading the bottleneck?; for a method with an EMA copy of
   the backbone, BYOL, MoCo, DINO, also vs that bare step plus the copy's forward, the like-for-like baseline), and
   vs the method's whole step on ready-made views (heads, loss, EMA and optimizer included: the loop's ceiling), once
   per data pipeline
   (``--pipelines pil,tensor``: per-image PIL augmentation in loader processes, or images decoded once and views drawn
   per batch by kornia; the decoding happens before the timed steps, in a fresh cache; ``tensor-workers``: the tensor
   pipeline's path for data sets too large to decode once, taken here by a decode limit of 0 bytes: images decoded,
   cropped and flipped in the loader processes, colour work per batch by kornia). Part 2 runs ``--rounds`` times
   (default 3); each figure and ratio reported is the median over the rounds, each ratio taken within its round.
3. Peak memory (``--memory-epochs 1,3``): the resident-set high-water mark of a fresh process running ``pretrain``
   for each number of epochs, per pipeline (the decoded array's pages, the model, the loader): the same peak after 1
   and 3 epochs means nothing grows with the epochs. Each loop's own peak is reported beside its images/s.
4. Scoring (``--score``): images/s of the score's extraction loop (``qscore_hf.features.iter_features``, decoding,
   the model's image processor, forward) per pipeline, against the bare forward of the same model on the same batches
   already preprocessed (target >= 0.95 with the tensor pipeline); a first pass, untimed, builds the decoded array.
The ratios are printed last; ``--methods none`` skips part 1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from _record import environment, save
from qscore_hf import QScoreRegularizer, arguments, decoded
from qscore_hf.backbones import create_backbone
from qscore_hf.data import dataset_normalization, load_image_dataset
from qscore_hf.pretraining import (
    AugmentedViews, EpochSampler, PretrainConfig, _collate_views, pretrain, training_step,
)
from qscore_hf.ssl import METHODS, TransformSettings, build_method


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def ready_made_step(method_name: str, args: argparse.Namespace, device: torch.device) -> Callable[[bool], None]:
    """One optimization step of the method (forward of two views, heads, loss, EMA update, backward, optimizer
    step) on one fixed batch of ready-made views, with or without the Q-Score regularizer."""
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone)
    method = build_method(method_name, backbone, backbone.num_features).to(device).to(memory_format=torch.channels_last)
    regularizer = QScoreRegularizer(backbone.num_features, warmup_samples=0).to(device)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    views = [torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
             .contiguous(memory_format=torch.channels_last) for _ in range(2)]  # fmt: skip

    def step(with_reg: bool) -> None:
        with _autocast(device, args.bf16):
            out = training_step(method, regularizer if with_reg else None, views, 0, 1000, 0)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def regularizer_overhead(method_name: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median step time with and without the regularizer, alternating, on one fixed batch."""
    step = ready_made_step(method_name, args, device)
    for _ in range(3):
        step(False), step(True)
    plain, regularized = [], []
    for _ in range(args.steps):
        plain.append(_timed(lambda: step(False), device))
        regularized.append(_timed(lambda: step(True), device))
    t_plain, t_reg = statistics.median(plain), statistics.median(regularized)
    return {"step_s": t_plain, "step_with_qscore_reg_s": t_reg, "ratio": t_reg / t_plain}


def method_step(args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of the loop method's whole optimization step on ready-made views (``ready_made_step``, without the
    regularizer): everything the full loop does except producing the data, so the loop's ratio to it is the data
    pipeline's and the training loop's own cost."""
    step = ready_made_step(args.loop_method, args, device)
    for _ in range(3):
        step(False)
    return args.batch_size / statistics.median(_timed(lambda: step(False), device) for _ in range(args.steps))


def _views_dataset(args: argparse.Namespace, method_cls) -> AugmentedViews:
    data = load_image_dataset(args.dataset, "train", max_samples=args.max_samples)
    mean, std = dataset_normalization(data) or ((0.5,) * 3, (0.25,) * 3)
    transform = method_cls.build_transform(TransformSettings(args.image_size, mean, std))
    return AugmentedViews(data, transform, seed=0)


def minimal_loop(args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of a plain PyTorch loop in the style of lightly's examples: DataLoader, forward, backward, step."""
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone)
    method = build_method(args.loop_method, backbone, backbone.num_features).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    views = _views_dataset(args, type(method))
    loader = DataLoader(views, batch_size=args.batch_size, sampler=EpochSampler(len(views), 0), drop_last=True,
                        num_workers=args.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.num_workers > 0, collate_fn=_collate_views)  # fmt: skip
    images, start = 0, None
    for step, batch in enumerate(loader):
        if step == 3:  # warm-up done
            _sync(device)
            start, images = time.perf_counter(), 0
        batch = [view.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last) for view in batch]
        with _autocast(device, args.bf16):
            loss = method(batch, step, 1000, 0).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        images += batch[0].shape[0]
        if step == args.steps + 2:
            break
    _sync(device)
    return images / (time.perf_counter() - start)


def bare_forward_backward(args: argparse.Namespace, device: torch.device, with_target: bool = False) -> float:
    """Images/s (pairs of views, as the loops count them) of the backbone alone on a ready-made batch; with
    ``with_target`` also the forward of the method's EMA copy of the backbone (BYOL's target network, MoCo's key
    encoder, DINO's teacher) on the same batch without gradients, as the method's step runs it."""
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone).to(device).to(memory_format=torch.channels_last)
    target = copy.deepcopy(backbone).requires_grad_(False) if with_target else None
    batch = torch.randn(2 * args.batch_size, 3, args.image_size, args.image_size, device=device)
    batch = batch.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with _autocast(device, args.bf16):
            loss = backbone(batch).float().mean()
            if target is not None:
                with torch.no_grad():
                    target(batch)
        loss.backward()

    for _ in range(3):
        step()
    seconds = statistics.median(_timed(step, device) for _ in range(args.steps))
    return args.batch_size / seconds


def has_target_backbone(method_name: str, args: argparse.Namespace) -> bool:
    """Whether the method's step also runs an EMA copy of its backbone (a child module of the backbone's type)."""
    backbone = create_backbone(args.backbone)
    method = build_method(method_name, backbone, backbone.num_features)
    return any(type(module) is type(backbone) for name, module in method.named_children() if name != "backbone")


def loop_round(args: argparse.Namespace, device: torch.device, pipelines: list[str]) -> dict[str, float]:
    """Part 2 once: each pipeline's full loop, the minimal loop, the bare step(s), and the ratios between them. A
    ratio is taken within one round, from figures measured minutes apart at most: the speed of a shared VM drifts
    by 10-20 % over longer spans, which one round alone can put into a ratio (hence ``--rounds``)."""
    loop: dict[str, float] = {}
    for pipeline in pipelines:
        _reset_peak_rss()
        loop[f"pretrain_{pipeline}_images_per_s"] = full_loop(args, device, pipeline)
        loop[f"pretrain_{pipeline}_peak_rss_mib"] = _peak_rss_mib()
    loop["minimal_loop_images_per_s"] = minimal_loop(args, device)
    loop["bare_forward_backward_images_per_s"] = bare_forward_backward(args, device)
    if has_target_backbone(args.loop_method, args):
        loop["bare_forward_backward_with_target_images_per_s"] = bare_forward_backward(args, device, with_target=True)
    loop["method_step_images_per_s"] = method_step(args, device)
    for pipeline in pipelines:
        rate = loop[f"pretrain_{pipeline}_images_per_s"]
        loop[f"ratio_{pipeline}_vs_minimal_loop"] = rate / loop["minimal_loop_images_per_s"]
        loop[f"ratio_{pipeline}_vs_method_step"] = rate / loop["method_step_images_per_s"]
        loop[f"ratio_{pipeline}_vs_bare_forward_backward"] = rate / loop["bare_forward_backward_images_per_s"]
        if "bare_forward_backward_with_target_images_per_s" in loop:
            loop[f"ratio_{pipeline}_vs_bare_forward_backward_with_target"] = (
                rate / loop["bare_forward_backward_with_target_images_per_s"]
            )
    print(json.dumps({key: round(value, 3) for key, value in loop.items()}), flush=True)
    return loop


def _reset_peak_rss() -> None:
    """Start this process's resident-set high-water mark (``VmHWM``) again from its current size (Linux)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mib() -> float:
    """This process's resident-set high-water mark in MiB: ``VmHWM`` (reset by ``_reset_peak_rss``), else
    ``getrusage``'s (since the process started)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pretrain_peak_rss(settings: dict) -> dict[str, float]:
    """Run ``pretrain`` in this (fresh) process: its resident set before (the libraries imported) and its peak
    during, in MiB (``VmHWM``: getrusage's ``ru_maxrss`` carries the parent's over the spawn's exec). Loader
    processes (``pil``) are not counted."""
    _reset_peak_rss()
    before = _peak_rss_mib()
    pretrain(PretrainConfig(**settings))
    return {"before_mib": before, "peak_mib": _peak_rss_mib()}


def peak_memory(args: argparse.Namespace, pipeline: str, epochs: int) -> dict[str, float]:
    """Peak resident set (MiB) of a fresh process pre-training ``epochs`` epochs of ``--max-samples`` images."""
    with tempfile.TemporaryDirectory() as out:
        settings = dict(
            method=args.loop_method, output_dir=out, backbone=args.backbone, dataset=args.dataset,
            max_samples=args.max_samples, image_size=args.image_size, batch_size=args.batch_size, epochs=epochs,
            num_workers=args.num_workers, log_with="none", progress=False, checkpoint_every=0, eval_split=None,
            optimizer="sgd", lr=1e-3, warmup_epochs=0, qscore_warmup_samples=0, data_pipeline=pipeline,
            mixed_precision="bf16" if args.bf16 else "no",
        )  # fmt: skip
        # not multiprocessing.Pool: its daemonic workers may not start the loader's processes
        with _decoded_cache(Path(out) / "decoded"), ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_pretrain_peak_rss, settings).result()


def score_loop(args: argparse.Namespace, device: torch.device, pipelines: list[str]) -> dict[str, float]:
    """Images/s of ``iter_features`` per pipeline and of the bare forward on the same preprocessed batches."""
    from qscore_hf import QScoreConfig, QScoreModel
    from qscore_hf.features import iter_features

    torch.manual_seed(0)
    model = QScoreModel(QScoreConfig(backbone=args.backbone, image_size=args.image_size)).to(device).eval()
    data = load_image_dataset(args.dataset, "train", max_samples=args.max_samples)
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out, _decoded_cache(Path(out) / "decoded"):
        for pipeline in pipelines:
            def extract() -> int:
                return sum(len(batch.features) for batch in iter_features(
                    model, data, args.batch_size, device, num_workers=args.num_workers if pipeline == "pil" else 0,
                    progress=False, data_pipeline=pipeline))  # fmt: skip

            extract()  # warm-up; builds the decoded array
            _reset_peak_rss()
            seconds = _timed(extract, device)
            result[f"score_{pipeline}_images_per_s"] = len(data.dataset) / seconds
            result[f"score_{pipeline}_peak_rss_mib"] = _peak_rss_mib()
    processor = model.image_processor()
    batches = [processor([data.dataset[i][data.image_column] for i in range(start, min(start + args.batch_size, len(data.dataset)))],
                         return_tensors="pt")["pixel_values"].to(device)
               for start in range(0, len(data.dataset), args.batch_size)]  # fmt: skip

    def forward() -> None:
        with torch.no_grad():
            for pixels in batches:
                model(pixels, return_qscore=False)

    forward()
    result["bare_forward_images_per_s"] = len(data.dataset) / _timed(forward, device)
    for pipeline in pipelines:
        result[f"ratio_score_{pipeline}_vs_bare_forward"] = (
            result[f"score_{pipeline}_images_per_s"] / result["bare_forward_images_per_s"]
        )
    return result


def full_loop(args: argparse.Namespace, device: torch.device, pipeline: str = "pil") -> float:
    """Images/s of ``pretrain`` as logged in its ``train_log.jsonl`` (the first logging window, warm-up, dropped)."""
    with tempfile.TemporaryDirectory() as out, _decoded_cache(Path(out) / "decoded"), _decode_limit(pipeline):
        window = max(1, args.steps // 4)
        cfg = PretrainConfig(
            method=args.loop_method, output_dir=out, backbone=args.backbone, dataset=args.dataset,
            max_samples=args.max_samples, image_size=args.image_size, batch_size=args.batch_size,
            max_steps=args.steps + window, epochs=10_000, num_workers=args.num_workers, log_with="none",
            progress=False, log_every=window, checkpoint_every=0, eval_split=None, optimizer="sgd", lr=1e-3,
            mixed_precision="bf16" if args.bf16 else "no", qscore_warmup_samples=0,
            data_pipeline="tensor" if pipeline == "tensor-workers" else pipeline,
        )  # fmt: skip
        pretrain(cfg)  # the export's statistics pass after the last step is outside the logged windows
        records = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
        rates = [record["images_per_s"] for record in records if "images_per_s" in record]  # not the health lines
    return statistics.mean(rates[1:])


@contextlib.contextmanager
def _decode_limit(pipeline: str):
    """For ``tensor-workers``: a decode-once limit of 0 bytes, so that the tensor pipeline decodes in the loader
    workers as it does for a data set too large to decode once."""
    limit = decoded.DEFAULT_MAX_BYTES
    decoded.DEFAULT_MAX_BYTES = 0 if pipeline == "tensor-workers" else limit
    try:
        yield
    finally:
        decoded.DEFAULT_MAX_BYTES = limit


@contextlib.contextmanager
def _decoded_cache(folder: Path):
    """A fresh decode cache for one loop: its images are decoded in the run measured (before its timed steps)."""
    previous = os.environ.get("QSCORE_HF_DECODED_CACHE")
    os.environ["QSCORE_HF_DECODED_CACHE"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["QSCORE_HF_DECODED_CACHE"]
        else:
            os.environ["QSCORE_HF_DECODED_CACHE"] = previous


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet18_cifar")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", default=",".join(sorted(METHODS)))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--loop-method", default="simclr")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--pipelines", default="pil,tensor", help="data pipelines of the full loop, compared (pil, "
                        "tensor, tensor-workers; --memory-epochs and --score take pil and tensor)")
    parser.add_argument("--memory-epochs", default="", help="e.g. 1,3: peak memory after that many epochs, per pipeline")
    parser.add_argument("--score", action="store_true", help="also time the score's extraction loop (part 4)")
    parser.add_argument("--skip-loop", action="store_true", help="skip part 2 (the pre-training loops)")
    parser.add_argument("--rounds", type=arguments.positive_int(), default=3, help="part 2 this many times; each figure and ratio "
                        "reported is the median over the rounds (each round's ratios from its own figures)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.bf16 = device.type == "cuda"

    result = {
        **environment("train_step", device),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "qscore_reg_overhead": {},
    }
    for name in [] if args.methods == "none" else args.methods.split(","):
        result["qscore_reg_overhead"][name] = regularizer_overhead(name, args, device)
        print(name, json.dumps(result["qscore_reg_overhead"][name]), flush=True)
    pipelines = args.pipelines.split(",")
    loop: dict[str, float] = {}
    if not args.skip_loop:
        rounds = [loop_round(args, device, pipelines) for _ in range(args.rounds)]
        # the median of each figure over the rounds, ratios included (each taken within its round)
        loop = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        if args.rounds > 1:
            result["loop_rounds"] = rounds
    if args.memory_epochs:
        result["peak_memory_by_epochs"] = {
            f"{pipeline}_{epochs}_epochs_rss": peak_memory(args, pipeline, int(epochs))
            for pipeline in pipelines for epochs in args.memory_epochs.split(",")
        }  # fmt: skip
        print(json.dumps(result["peak_memory_by_epochs"]), flush=True)
    if args.score:
        result["score"] = score_loop(args, device, pipelines)
        print(json.dumps(result["score"]), flush=True)
    result["loop"] = loop
    save(result, args.out)
    for name, figures in result["qscore_reg_overhead"].items():
        print(f"{name}: step time with / without Q-Score regularization = {figures['ratio']:.3f} (target <= 1.03)")
    for pipeline in pipelines if loop else []:
        print(f"pre-training loop ({pipeline}) vs minimal loop images/s = {loop[f'ratio_{pipeline}_vs_minimal_loop']:.3f} "
              "(target >= 1.0)")  # fmt: skip
        print(f"pre-training loop ({pipeline}) vs bare forward+backward images/s = "
              f"{loop[f'ratio_{pipeline}_vs_bare_forward_backward']:.3f} (target >= 0.8)")  # fmt: skip
        if f"ratio_{pipeline}_vs_bare_forward_backward_with_target" in loop:
            print(f"pre-training loop ({pipeline}) vs bare forward+backward with the target network's forward "
                  f"images/s = {loop[f'ratio_{pipeline}_vs_bare_forward_backward_with_target']:.3f} (target >= 0.8)")
        print(f"pre-training loop ({pipeline}) vs the method's own step on ready-made views images/s = "
              f"{loop[f'ratio_{pipeline}_vs_method_step']:.3f} (what the data and the loop cost)")
    for pipeline in pipelines if args.score else []:
        print(f"score extraction ({pipeline}) vs bare forward images/s = "
              f"{result['score'][f'ratio_score_{pipeline}_vs_bare_forward']:.3f} (target >= 0.95 with tensor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
