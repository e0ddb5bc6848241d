"""``QScoreModel``: a feature-only SSL backbone that returns its pooled features and per-sample Q-Scores."""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .backbones import CIFAR_SUFFIX, SourceRepo, build_backbone, find_source, hub_unreachable, import_backbone
from .calibration import DEFAULT_COVERAGE, EpsCalibrator, is_auto
from .configuration_qscore import QScoreConfig
from .image_processing_qscore import QScoreImageProcessor
from .io_utils import atomic_directory
from .model_files import check_model_folder, check_weight_files
from .model_snapshot import DIGEST_FIELD, consistent_copy, record_weights_digest
from .remote_code import write_remote_code
from .score import ActivationStats, highly_activating, qscore

__all__ = ["QScoreModel", "QScoreModelOutput", "WeightsMismatchError"]


class WeightsMismatchError(ValueError):
    """The weights of a model folder do not fit its config."""


@dataclass
class QScoreModelOutput(ModelOutput):
    """Output of :class:`QScoreModel`.

    Args:
        features: ``(batch, hidden_size)`` pooled backbone features, before any head.
        q_scores: ``(batch,)`` per-sample Q-Scores (float32, detached), using the model's saved discriminative
            features (all features when it has no activation statistics yet).
        highly_activating: ``(batch, hidden_size)`` boolean mask of each sample's highly activating features
            ``L_i`` (when asked for).
        logits: ``(batch, num_labels)`` linear-probe logits when the config has ``probe_head=True``.
    """

    features: Tensor | None = None
    q_scores: Tensor | None = None
    highly_activating: Tensor | None = None
    logits: Tensor | None = None


class QScoreModel(PreTrainedModel):
    """A backbone without classifier (timm or transformers), its activation statistics (SPEC §3) and an optional
    probe head.

    Example::

        model = QScoreModel.from_pretrained("org/byol-r50-qreg")  # or "facebook/dinov2-small", "timm/resnet50.a1_in1k"
        processor = AutoImageProcessor.from_pretrained("org/byol-r50-qreg")  # or model.image_processor()
        out = model(**processor(images, return_tensors="pt"))
        out.features, out.q_scores
    """

    config_class = QScoreConfig
    base_model_prefix = "qscore"
    main_input_name = "pixel_values"

    def __init__(self, config: QScoreConfig) -> None:
        super().__init__(config)
        self.backbone = build_backbone(config)
        width = int(self.backbone.num_features)
        if config.hidden_size is None:
            config.hidden_size = width
        elif config.hidden_size != width:
            raise ValueError(
                f"config.hidden_size={config.hidden_size} but backbone {config.backbone!r} has {width} features; "
                "leave hidden_size unset or fix the backbone name."
            )
        # eps="auto" is resolved by compute_activation_stats; until then the (empty) statistics hold the paper's eps.
        self.activation_stats = ActivationStats(width, 4.0 if is_auto(config.qscore_eps) else config.qscore_eps)
        self.classifier = nn.Linear(width, config.num_labels) if config.probe_head else None
        if config.backbone_library == "timm" and config.backbone.endswith(CIFAR_SUFFIX):
            # The CIFAR stem's padding changes no tensor's shape, so a config that disagrees with the weights would
            # load silently: the weights' own value is saved with them and checked by from_pretrained.
            self.register_buffer(_STEM_PADDING, torch.tensor(config.stem_padding, dtype=torch.int64))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # timm initialised the backbone already; only the probe head needs an init (the usual linear-probe one).
        if module is self.classifier:
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------------------------- scoring
    def discriminative_features(self) -> Tensor | None:
        """Indices of the discriminative features ``D`` from the saved statistics; ``None`` (all features)
        when the model has seen no reference data."""
        if int(self.activation_stats.num_samples) == 0:
            return None
        return self.activation_stats.discriminative(self.config.qscore_p_lo, self.config.qscore_p_hi)

    def forward(
        self,
        pixel_values: Tensor,
        return_qscore: bool = True,
        return_highly_activating: bool = False,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> QScoreModelOutput | tuple:
        """Pooled features, and (by default) their Q-Scores; ``pixel_values`` as the image processor makes them."""
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must have shape (batch, channels, height, width); got {tuple(pixel_values.shape)}. "
                "Use the model's image processor (AutoImageProcessor.from_pretrained) to prepare images."
            )
        features = self.backbone(pixel_values)
        q_scores = mask = None
        if (return_qscore or return_highly_activating) and is_auto(self.config.qscore_eps):
            raise ValueError(
                "this model's qscore_eps is 'auto', which is calibrated on reference data: call "
                "model.compute_activation_stats(batches) first (or pass return_qscore=False)."
            )
        if return_qscore or return_highly_activating:
            with torch.no_grad():
                detached = features.detach()
                if return_qscore:
                    q_scores = qscore(
                        detached, self.discriminative_features(), self.config.qscore_eps, self.config.qscore_normalize
                    )
                if return_highly_activating:
                    mask = highly_activating(detached, self.config.qscore_eps)
        logits = self.classifier(features) if self.classifier is not None else None
        output = QScoreModelOutput(features=features, q_scores=q_scores, highly_activating=mask, logits=logits)
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if use_dict else output.to_tuple()

    @torch.no_grad()
    def compute_activation_stats(
        self,
        batches: Iterable[Tensor | Mapping[str, Tensor]],
        reset: bool = True,
        progress: bool = True,
        all_reduce: bool = True,
        coverage: float | None = None,
    ) -> ActivationStats:
        """One pass over reference data to (re)compute the activation statistics saved with the model.

        ``batches`` yields ``pixel_values`` tensors or dicts holding them (e.g. a DataLoader over a processed
        ``datasets.Dataset``). Under torch.distributed each process passes its shard and the counts are summed.

        When ``config.qscore_eps`` is ``"auto"`` (or was calibrated before, or ``coverage`` is given), a first pass
        calibrates eps on the same batches (``qscore_hf.calibration``; ``batches`` must then be re-iterable, e.g. a
        DataLoader or a list) and the resolved value replaces ``config.qscore_eps``.
        """
        was_training = self.training
        self.eval()
        previous = self.config.qscore_eps_calibration or {}
        if coverage is not None or is_auto(self.config.qscore_eps) or previous:
            if iter(batches) is batches:
                raise ValueError(
                    "eps='auto' reads the reference batches twice (calibration, then counting); pass a re-iterable "
                    "such as a DataLoader or a list, not a generator."
                )
            coverage = coverage if coverage is not None else previous.get("coverage", DEFAULT_COVERAGE)
            calibrator = EpsCalibrator(self.activation_stats.num_features, self.device)
            for pixel_values in self._pixel_batches(batches, progress, "calibrating eps"):
                calibrator.update(self.backbone(pixel_values))
            if all_reduce:
                calibrator.all_reduce()
            self.config.qscore_eps = calibrator.resolve(coverage)
            self.config.qscore_eps_calibration = {"coverage": coverage, "num_samples": calibrator.num_samples}
            self.activation_stats.eps = self.config.qscore_eps
            reset = True
        if reset:
            self.activation_stats.reset()
        for pixel_values in self._pixel_batches(batches, progress, "activation statistics"):
            self.activation_stats.update(self.backbone(pixel_values))
        if all_reduce:
            self.activation_stats.all_reduce()
        self.train(was_training)
        return self.activation_stats

    def _pixel_batches(self, batches: Iterable[Tensor | Mapping[str, Tensor]], progress: bool, desc: str):
        for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            pixel_values = batch["pixel_values"] if isinstance(batch, Mapping) else batch
            yield pixel_values.to(self.device, self.dtype)

    def image_processor(self) -> QScoreImageProcessor:
        """The image processor matching this model's input size and normalization."""
        return QScoreImageProcessor.from_model_config(self.config)

    # ----------------------------------------------------------------------------------------------- saving
    def save_pretrained(
        self, save_directory: str | os.PathLike, *args: Any, is_main_process: bool = True, push_to_hub: bool = False, **kwargs: Any
    ) -> None:
        """``PreTrainedModel.save_pretrained`` (safetensors) plus the image processor and the code that loads both
        (``auto_map``: ``trust_remote_code=True`` works without qscore_hf), written atomically: the folder appears
        complete or not at all."""
        if not is_main_process:
            return
        hub_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "private", "token") if key in kwargs}
        with atomic_directory(save_directory) as tmp:
            super().save_pretrained(tmp, *args, is_main_process=True, push_to_hub=False, **kwargs)
            self.image_processor().save_pretrained(tmp)
            write_remote_code(tmp)
            setattr(self.config, DIGEST_FIELD, record_weights_digest(tmp))  # the content id a load checks
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", Path(save_directory).name)
            self.push_to_hub(repo_id, **hub_kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """``PreTrainedModel.from_pretrained`` (local folder or Hub id, through huggingface_hub's cache), but
        strict: a checkpoint whose tensors do not match the config raises ``WeightsMismatchError`` naming them.

        Besides our own folders, ``pretrained_model_name_or_path`` may be a transformers vision repo (ViT, DINO,
        DINOv2, ResNet, ConvNeXt; ``pooling="cls_mean"`` appends the mean patch token to a ViT's CLS token) or a
        timm repo (``timm/...`` or ``hf-hub:timm/...``); see :meth:`from_backbone_repo`.

        Missing ``classifier.*`` tensors are allowed (a probe head added to a backbone-only checkpoint), and
        ``ignore_mismatched_sizes=True`` allows mismatched shapes as in transformers. A zoo release's name
        (``qscore-hf zoo list``, e.g. ``"dino-vits16"``) is downloaded and converted once into the zoo's cache.

        Without network (the Hub's host name does not resolve) a Hub id is read from the Hugging Face cache, as with
        ``HF_HUB_OFFLINE=1``, and one that is not there fails at once instead of after minutes of retries.
        """
        zoo = _zoo_loading()
        if zoo is not None:  # a zoo release's name (neither a folder nor a Hub id): built once into the zoo's cache
            pretrained_model_name_or_path = zoo.resolve_zoo_name(pretrained_model_name_or_path) or pretrained_model_name_or_path
        no_network = _read_cache_without_network(pretrained_model_name_or_path, kwargs)
        pooling = kwargs.pop("pooling", None)
        source = None if "config" in kwargs else _find_source(pretrained_model_name_or_path, kwargs)
        if no_network and source is None and "config" not in kwargs:
            raise OSError(
                f"{pretrained_model_name_or_path}: no local folder, not in the Hugging Face cache, and the Hub is "
                f"unreachable ({no_network}). Check the network, or give a local folder."
            )
        if source is not None and source.library != "qscore":
            return cls.from_backbone_repo(source, pooling=pooling, **kwargs)
        if pooling is not None:
            raise ValueError(f"pooling={pooling!r}: a QScoreModel folder keeps the pooling it was saved with.")
        local = Path(os.fspath(pretrained_model_name_or_path)).is_dir()
        if source is not None and source.repo_id is not None:  # a Hub id: the weights already in its cached snapshot
            check_weight_files(source.folder)
        want_info = kwargs.pop("output_loading_info", False)
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        # Load with transformers' own check off so that we can name every offending tensor ourselves; a local folder
        # from a private copy of one consistent snapshot (another process may be saving into it).
        snapshot = consistent_copy(pretrained_model_name_or_path, check_model_folder) if local else contextlib.nullcontext()
        with snapshot as copy:
            model, info = super().from_pretrained(
                copy or pretrained_model_name_or_path, *args, output_loading_info=True, ignore_mismatched_sizes=True,
                **kwargs,
            )
            if copy is not None:
                _check_stored_dtypes(copy, model, str(pretrained_model_name_or_path))
        if copy is not None:
            model.config._name_or_path = model.name_or_path = os.fspath(pretrained_model_name_or_path)
        missing = sorted(key for key in info.get("missing_keys", ()) if not key.startswith(_OPTIONAL_TENSORS))
        if _RECORDED_EPS in info.get("missing_keys", ()):  # saved before the eps was recorded: assume the config's
            model.activation_stats.record_eps()
        _check_stem_padding(model, info, str(pretrained_model_name_or_path))
        unexpected = sorted(info.get("unexpected_keys", ()))
        mismatched = [] if allow_mismatch else sorted(_describe_mismatch(item) for item in info.get("mismatched_keys", ()))
        if missing or unexpected or mismatched:
            raise WeightsMismatchError(_mismatch_message(str(pretrained_model_name_or_path), missing, unexpected, mismatched))
        model.activation_stats.validate(f"the activation statistics saved in {pretrained_model_name_or_path}")
        return (model, info) if want_info else model

    @classmethod
    def from_backbone_repo(
        cls, source: str | os.PathLike | SourceRepo, pooling: str | None = None, **kwargs: Any
    ) -> "QScoreModel":
        """A ``QScoreModel`` over a transformers vision repo or a timm repo (local folder or Hub id), with the
        source's weights and preprocessing and no activation statistics yet.

        The config records the source (library, repo id, revision, commit), the pooling and the preprocessing,
        and rebuilds the architecture offline: ``save_pretrained`` then writes a self-contained folder.
        ``kwargs``: huggingface_hub's ``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``torch_dtype``,
        and ``QScoreConfig`` fields (``qscore_eps``, ``ssl_method``, ...).
        """
        hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KWARGS if kwargs.get(key) is not None}
        dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
        # Loading switches transformers' own loaders pass along are no config fields.
        kwargs = {key: value for key, value in kwargs.items() if not key.startswith("_") and key not in _LOAD_ONLY}
        if not isinstance(source, SourceRepo):
            name = source
            source = find_source(name, **hub_kwargs)
            if source is None:
                raise ValueError(f"{name}: no config.json found (not a model folder, or not in the Hub cache).")
        hub_kwargs.pop("revision", None)
        check_weight_files(source.snapshot(**hub_kwargs))
        backbone, fields = import_backbone(source, pooling, **hub_kwargs)
        config = cls.config_class(**fields, **kwargs)
        config._name_or_path = source.repo_id or str(source.folder)
        model = cls(config)
        model.backbone.load_state_dict(backbone.state_dict(), strict=True)
        if dtype is not None and dtype != "auto":
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        return model.eval()


_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")
_LOAD_ONLY = ("trust_remote_code", "output_loading_info", "force_download", "proxies")


def _zoo_loading() -> Any:
    """The module ``qscore_hf.zoo.loading``, or ``None`` in the remote code a saved folder carries (it has no zoo).
    Imported by name: transformers' remote-code loader would try to copy ``from .zoo.loading import`` as a flat file
    ``zoo.loading.py`` and fail to load the folder."""
    try:
        return importlib.import_module(f"{__package__}.zoo.loading")
    except ModuleNotFoundError as error:
        if error.name not in (f"{__package__}.zoo", f"{__package__}.zoo.loading"):
            raise
        return None


def _read_cache_without_network(name: str | os.PathLike, kwargs: dict[str, Any]) -> str | None:
    """For a Hub id on a machine whose Hub host does not resolve: set ``local_files_only`` (the cache answers, with
    no retries) and return why the Hub is unreachable; ``None`` (and ``kwargs`` as they are) otherwise."""
    if kwargs.get("local_files_only") or Path(os.fspath(name)).expanduser().exists():
        return None
    problem = hub_unreachable()
    if problem is not None:
        kwargs["local_files_only"] = True
    return problem


# Looks at a local folder caught between the two renames of another process's save (briefly without config.json).
_SETTLE_ATTEMPTS, _SETTLE_SECONDS = 5, 0.05


def _find_source(name: str | os.PathLike, kwargs: Mapping[str, Any]) -> SourceRepo | None:
    """The model's config.json, to tell our folders from transformers and timm repos (``None``: not found). A file
    that vanishes while it is read (a save swapping the folder) is looked for again a moment later."""
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
    for _ in range(_SETTLE_ATTEMPTS - 1):
        try:
            return find_source(name, **hub_kwargs)
        except FileNotFoundError:
            time.sleep(_SETTLE_SECONDS)
    return find_source(name, **hub_kwargs)


_RECORDED_EPS = "activation_stats.counted_eps"
_STEM_PADDING = "stem_padding"
# A probe head added to a backbone-only checkpoint, and the records of eps and stem padding that older folders lack.
_OPTIONAL_TENSORS = ("classifier.", _RECORDED_EPS, _STEM_PADDING)


def _check_stem_padding(model: QScoreModel, info: Mapping[str, Any], source: str) -> None:
    """A CIFAR-stem model's weights were saved with the padding config.json states (older folders: assumed)."""
    saved = getattr(model, _STEM_PADDING, None)
    if saved is None or _STEM_PADDING in info.get("missing_keys", ()):
        if saved is not None:
            saved.fill_(model.config.stem_padding)
        return
    if int(saved) != model.config.stem_padding:
        raise WeightsMismatchError(
            f"{source}: config.json says stem_padding={model.config.stem_padding}, but the weights were trained with "
            f"stem_padding={int(saved)} (recorded in model.safetensors): set config.json's stem_padding back to "
            f"{int(saved)}; another padding would compute other features from the same weights."
        )


def _check_stored_dtypes(folder: Path, model: QScoreModel, source: str) -> None:
    """``WeightsMismatchError`` when model.safetensors stores a floating-point tensor of the model as integers or
    complex numbers (a header that says I32 for float bytes loads as weights of order 1e8), or an integer buffer
    (counts) as floats: transformers casts either silently."""
    from safetensors import safe_open

    path = folder / "model.safetensors"
    if not path.is_file():
        return
    expected = model.state_dict()
    with safe_open(str(path), framework="pt") as weights:
        for key in weights.keys():
            if key not in expected:
                continue
            stored = weights.get_slice(key).get_dtype()
            stored_float = stored.startswith(("F", "BF"))
            if stored_float != expected[key].is_floating_point():
                raise WeightsMismatchError(
                    f"{source}: model.safetensors stores {key} as {stored} but the model's tensor is "
                    f"{expected[key].dtype}; the file is damaged or was written by another program: re-save the model."
                )


def _describe_mismatch(item: Any) -> str:
    if isinstance(item, (tuple, list)) and len(item) == 3:
        key, saved, expected = item
        return f"{key} (saved {tuple(saved)}, config needs {tuple(expected)})"
    return str(item)


def _mismatch_message(source: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    def first(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" (and {len(keys) - 8} more)" if len(keys) > 8 else "")

    parts = [f"the weights in {source} do not match its config.json:"]
    if missing:
        parts.append(f"missing tensors: {first(missing)}")
    if unexpected:
        parts.append(f"unexpected tensors: {first(unexpected)}")
    if mismatched:
        parts.append(f"tensors with another shape: {first(mismatched)}")
    parts.append(
        "Check that config.json's backbone (and stem_padding/probe_head) is the architecture the weights were "
        "saved from; to import a released SSL checkpoint use `qscore-hf convert`."
    )
    return "\n  ".join(parts)
