"""A run's config reaches every tracker as values it accepts, whatever the field's type (tracking.tracker_config)."""

import json
import types
import typing
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.tensorboard.summary import hparams

from qscore_hf.pretraining import PretrainConfig, _flat_config
from qscore_hf.tracking import tracker_config, tracker_value


def test_values_by_hand():
    assert tracker_value(()) == "[]"  # the field that crashed TensorBoard: snapshot_epochs=()
    assert tracker_value((1, 2, 4)) == "[1, 2, 4]"
    assert tracker_value(None) == "null"
    assert tracker_value({"b": (1,), "a": None}) == '{"a": null, "b": [1]}'
    assert tracker_value(Path("runs/x")) == "runs/x"
    assert tracker_value(np.float32(0.5)) == 0.5 and type(tracker_value(np.float32(0.5))) is float
    assert tracker_value(torch.tensor(3)) == 3 and type(tracker_value(torch.tensor(3))) is int
    assert tracker_value(float("inf")) == "inf"
    assert tracker_value(True) is True and tracker_value("auto") == "auto" and tracker_value(7) == 7


def _samples(annotation) -> list:
    """Values of a field's annotated type, the awkward ones included; a type this does not know fails the test, so a
    new kind of field is walked before it ships."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return [value for arg in args for value in _samples(arg)]
    if annotation is type(None):
        return [None]
    if annotation is bool:
        return [True, False]
    if annotation is int:
        return [0, 3]
    if annotation is float:
        return [0.0, 1e-4]
    if annotation is str:
        return ["", "auto"]
    if origin is tuple:
        return [(), (1, 2, 4)]
    if origin is dict:
        return [{}, {"temperature": 0.1, "crops": (2, 6), "none": None}]
    if annotation is Path:
        return [Path("runs/x")]
    raise AssertionError(f"PretrainConfig has a field of type {annotation!r} that this walk does not know: add it")


def test_every_pretrain_config_field_type_reaches_tensorboard_and_json():
    hints = typing.get_type_hints(PretrainConfig)
    base = PretrainConfig(method="simclr", output_dir="runs/x")
    checked = 0
    for field in fields(PretrainConfig):
        for value in _samples(hints[field.name]):
            flat = _flat_config(replace(base, **{field.name: value}))
            assert all(type(v) in (bool, int, float, str) for v in flat.values()), (field.name, value, flat)
            hparams(flat, {})  # TensorBoard's own check: raises ValueError on any other type
            json.loads(json.dumps(flat, allow_nan=False))  # W&B and JSON logs
            checked += 1
    assert checked > 2 * len(fields(PretrainConfig))


def test_method_kwargs_are_flattened_with_their_prefix():
    cfg = PretrainConfig(method="swav", output_dir="x", method_kwargs={"crops": (2, 6), "temperature": 0.1})
    flat = _flat_config(cfg)
    assert flat["method.crops"] == "[2, 6]" and flat["method.temperature"] == 0.1 and "method_kwargs" not in flat


@pytest.mark.parametrize("config", [{"a": object()}, {"b": {1, 3, 2}}, {"c": np.arange(3)}])
def test_anything_else_becomes_text(config):
    (value,) = tracker_config(config).values()
    assert isinstance(value, str)
    hparams({"x": value}, {})
