"""The checker keeps the verdict of a call (ascend_moe.rules, ``_verdict_key``): a call like one checked
before gets the same violations without running the rules again.  These tests change, between calls of the
same shapes, each thing a rule reads and expect the verdict to follow it."""
from __future__ import annotations

import warnings

import pytest
import torch

import ascend_moe as am
from ascend_moe import rules


def _gmm_args(group_list, dtype=torch.bfloat16):
    x = torch.ones(12, 8, dtype=dtype)
    w = torch.ones(3, 8, 4, dtype=dtype)
    return x, w, torch.tensor(group_list, dtype=torch.int64)


def test_group_list_values_of_the_same_shape_are_checked_each_call():
    for group_list, ok in (([4, 8, 12], True), ([4, 3, 12], False), ([4, 8, 12], True), ([4, 13, 12], False)):
        x, w, gl = _gmm_args(group_list)
        if ok:
            assert am.npu_gmm(x, w, group_list=gl).shape == (12, 4)
        else:
            with pytest.raises(am.ConstraintError, match="group_list"):
                am.npu_gmm(x, w, group_list=gl)


def test_a_refused_call_is_refused_again_and_a_changed_dtype_is_checked():
    x, w, gl = _gmm_args([4, 8, 12])
    for _ in range(3):  # x and w of different dtypes: refused every time, with the rule named
        with pytest.raises(am.ConstraintError, match="dtype"):
            am.npu_gmm(x.float(), w, group_list=gl)
    assert am.npu_gmm(x, w, group_list=gl).dtype == torch.bfloat16


def test_layout_is_part_of_the_verdict():
    """The same shapes with a transposed weight (its last two dims swapped in memory) are a different call."""
    x, w, gl = _gmm_args([4, 8, 12])
    wt = torch.ones(3, 4, 8, dtype=w.dtype).transpose(1, 2)  # the same logical shape, another layout
    assert wt.shape == w.shape and wt.stride() != w.stride()
    key, key_t = (rules._verdict_key("npu_gmm", {"x": x, "weight": t, "group_list": gl}, rules.resolve_target())
                  for t in (w, wt))
    assert key is not None and key_t is not None and key != key_t


def test_doc_only_warnings_are_given_on_every_call():
    x, w = torch.ones(20, 9, dtype=torch.bfloat16), torch.ones(3, 9, 5, dtype=torch.bfloat16)
    gl = torch.tensor([4, 4, 13])
    for _ in range(3):
        with pytest.warns(am.ConstraintWarning, match="13 < 20"):
            am.npu_gmm(x, w, group_list=gl)


def test_unkeyable_calls_are_checked_every_time():
    """Tensor subclasses, NumPy arrays and other objects give no key: their calls run the rules each time."""
    x, w, gl = _gmm_args([4, 8, 12])
    target = rules.resolve_target()

    class Sub(torch.Tensor):
        pass
    assert rules._verdict_key("npu_gmm", {"x": x.as_subclass(Sub), "weight": w, "group_list": gl}, target) is None
    assert rules._verdict_key("npu_gmm", {"x": x.float().numpy(), "weight": w, "group_list": gl}, target) is None
    assert rules._verdict_key("npu_gmm", {"x": x, "weight": w, "group_list": object()}, target) is None
    big = torch.zeros(1 << 12, dtype=torch.int64)  # 32 KB of values: more than a key holds
    assert rules._verdict_key("npu_gmm", {"x": x, "weight": w, "group_list": big}, target) is None
    quantized = torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)  # no NumPy counterpart
    assert rules._verdict_key("npu_gmm", {"x": x, "weight": w, "group_list": quantized}, target) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calls = []
        real = rules._check_call_uncached

        def counting(*a, **k):
            calls.append(1)
            return real(*a, **k)
        try:
            rules._check_call_uncached = counting
            for _ in range(3):
                rules.check_call("npu_gmm", rules.bind("npu_gmm", (x.as_subclass(Sub), w), {"group_list": gl}),
                                 target)
            assert len(calls) == 3
            for _ in range(3):
                rules.check_call("npu_gmm", rules.bind("npu_gmm", (x, w), {"group_list": gl}), target)
            assert len(calls) <= 4  # the plain call: checked at most once
        finally:
            rules._check_call_uncached = real
