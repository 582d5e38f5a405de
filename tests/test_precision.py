"""``bf16: auto``: bfloat16 autocast only where the device has it natively."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

import ltdistill.utils as U
from ltdistill.errors import ConfigError
from ltdistill.experts import ExpertConfig, buffer_dir, resolved, train_experts


def test_auto_follows_the_device_and_true_warns_where_it_is_emulated(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(U, "native_bf16", lambda device, n=native: n)
        assert U.resolve_bf16("auto", "cpu") is native and U.resolve_bf16("AUTO", "cpu") is native
        assert U.resolve_bf16(False, "cpu") is False
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert U.resolve_bf16(True, "cpu", "experts.bf16") is True
        assert [str(x.message) for x in w if "experts.bf16=true" in str(x.message)] == ([] if native else
                                                                                         [str(w[0].message)])
    with pytest.raises(ConfigError, match="true, false or auto"):
        U.resolve_bf16("fast", "cpu")


def test_native_bf16_on_cpu_agrees_with_onednn():
    assert U.native_bf16("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert U.native_bf16("meta") is False


def test_an_auto_buffer_is_keyed_and_recorded_by_the_precision_it_ran(monkeypatch, digits_lt, tmp_path):
    cfg = ExpertConfig(num_experts=1, epochs=1, cls_epochs=1, device="cpu")
    assert cfg.bf16 == "auto"
    for native in (True, False):
        monkeypatch.setattr("ltdistill.experts.resolve_bf16", lambda v, d, k="", n=native: n if v == "auto" else v)
        assert resolved(cfg).bf16 is native
        assert buffer_dir(digits_lt, cfg) == buffer_dir(digits_lt, dataclasses.replace(cfg, bf16=native))
    assert buffer_dir(digits_lt, dataclasses.replace(cfg, bf16=True)) != buffer_dir(digits_lt, dataclasses.replace(
        cfg, bf16=False))
    monkeypatch.setattr("ltdistill.experts.resolve_bf16", lambda v, d, k="": False if v == "auto" else v)
    path = train_experts(digits_lt, cfg, tmp_path)
    assert json.loads((path / "meta.json").read_text())["config"]["bf16"] is False
