"""Scenarios run inside a worker process whose ASCEND_HOME_PATH points at a fake CANN build (the loader
is run-once per process, so every differently built fake gets its own process).  Each scenario asserts
what the fake received - dims, strides, offsets, aclDataType, format, storage dims, every scalar with its
C type, nullptr for absent optionals, phase order, workspace and stream - and that the bytes the fake
wrote come back in the right output tensors, and that every ACL object was destroyed.

The expected values are written out here from the aclnn prototypes and the spec (aclDataType codes,
NZ storage formula), never read back from the dispatcher.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch

from fakecann_harness import Fake, expected_pattern

# aclDataType codes (spec aclnn-abi-and-torch.md 1.2), written out independently of aclnn.py
FLOAT, FLOAT16, INT8, INT32, INT64, BF16 = 0, 1, 2, 3, 9, 27
ND, NZ = 2, 29
NULL = object()

SCENARIOS: Dict[str, Any] = {}
OLD_CANN_SCENARIOS: Dict[str, Any] = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def old_cann(fn):
    OLD_CANN_SCENARIOS[fn.__name__] = fn
    return fn


def aclnn():
    from ascend_moe.backends import aclnn as mod
    return mod


# ------------------------------------------------------------------------------------------ checks

def nd_tensor(ev: dict, t: torch.Tensor, dtype: int) -> None:
    assert ev["dims"] == list(t.shape), (ev, t.shape)
    assert ev["strides"] == list(t.stride()), (ev, t.stride())
    assert ev["offset"] == t.storage_offset(), ev
    assert ev["dtype"] == dtype, ev
    assert ev["format"] == ND, ev
    assert ev["storage"] == [t.untyped_storage().nbytes() // t.element_size()], ev
    assert ev["data"] == t.untyped_storage().data_ptr(), ev


def nz_tensor(ev: dict, t: torch.Tensor, dtype: int, storage: List[int]) -> None:
    assert ev["dims"] == list(t.shape), ev
    assert ev["strides"] == list(t.stride()), ev
    assert ev["dtype"] == dtype and ev["format"] == NZ, ev
    assert ev["storage"] == storage, (ev["storage"], storage)
    assert ev["data"] == t.untyped_storage().data_ptr(), ev


def out_bytes(t: torch.Tensor, k: int) -> None:
    got = t.contiguous().view(-1).view(torch.uint8).numpy() if t.dim() else \
        t.reshape(1).view(torch.uint8).numpy()
    want = expected_pattern(k, t.numel(), t.element_size())
    assert (got == want).all(), f"output {k}: fake pattern not found in the returned tensor"


class Call:
    """One recorded aclnn call: its phase-1 arguments resolved against the created tensors."""

    def __init__(self, fake: Fake, api: str):
        self.fake = fake
        g = [e for e in fake.gws() if e["api"] == api]
        assert len(g) == 1, f"expected one {api}GetWorkspaceSize call, got {[e['api'] for e in fake.gws()]}"
        self.gws = g[0]
        self.args = self.gws["args"]
        self.tensors = fake.tensors()
        self.lists = {e["id"]: e for e in fake.events() if e["ev"] == "aclCreateTensorList"}
        self.api = api

    def kinds(self) -> List[str]:
        return [a["t"] for a in self.args]

    def null(self, i: int) -> bool:
        return bool(self.args[i].get("null"))

    def tensor(self, i: int) -> dict:
        a = self.args[i]
        assert a["t"] == "aclTensor*" and not a.get("null"), a
        return self.tensors[a["id"]]

    def items(self, i: int) -> List[dict]:
        a = self.args[i]
        assert a["t"] == "aclTensorList*" and not a.get("null"), a
        return [self.tensors[j] for j in a["items"]]

    def value(self, i: int, ctype: str):
        a = self.args[i]
        assert a["t"] == ctype, (i, a, ctype)
        return a["v"] if "v" in a else a.get("values")

    def phases(self) -> None:
        """phase 1 then workspace then phase 2 with that workspace, on the expected stream."""
        ev = self.fake.events()
        i1 = next(i for i, e in enumerate(ev) if e["ev"] == "gws" and e["api"] == self.api)
        i2 = next(i for i, e in enumerate(ev) if e["ev"] == "run" and e["api"] == self.api)
        assert i1 < i2
        run = ev[i2]
        assert run["executor"] == self.gws["executor"] and run["status"] == 0
        assert run["workspace_size"] == self.gws["workspace_size"]
        mallocs = [e for e in ev[i1:i2] if e["ev"] == "aclrtMalloc.ptr"]
        if self.gws["workspace_size"]:
            assert mallocs and run["workspace"] == mallocs[-1]["ptr"]
            after = [e["ev"] for e in ev[i2:]]
            assert after.index("aclrtSynchronizeStream") < after.index("aclrtFree")
        else:
            assert run["workspace"] == 0 and not mallocs
        # every argument object is destroyed after phase 2 returned
        first_destroy = min(i for i, e in enumerate(ev) if e["ev"].startswith("aclDestroy"))
        assert first_destroy > i2


def begin(fake: Fake) -> None:
    fake.reset()


def gating_args(x, k, **kw):
    a = dict(x=x, k=k, bias=None, input_ids=None, tid2eid=None, k_group=1, group_count=1, group_select_mode=0,
             renorm=0, norm_type=0, out_flag=False, routed_scaling_factor=1.0, eps=1e-20)
    a.update(kw)
    return a


# ------------------------------------------------------------------------------------------ gating

@scenario
def gating_doubles_bool_nullptr_and_outputs(fake: Fake):
    begin(fake)
    x = torch.randn(5, 16, dtype=torch.float16)
    y, idx, norm = aclnn().call("npu_moe_gating_top_k", gating_args(
        x, 4, k_group=2, group_count=4, group_select_mode=1, renorm=0, norm_type=1,
        routed_scaling_factor=2.5, eps=1e-20))
    c = Call(fake, "aclnnMoeGatingTopK")
    assert c.kinds() == ["aclTensor*"] * 2 + ["int64_t"] * 6 + ["bool", "double", "double"] + ["aclTensor*"] * 3
    nd_tensor(c.tensor(0), x, FLOAT16)
    assert c.null(1)  # bias absent -> nullptr
    assert [c.value(i, "int64_t") for i in range(2, 8)] == [4, 2, 4, 1, 0, 1]
    assert c.value(8, "bool") is False and c.args[8]["raw"] == 0
    assert c.value(9, "double") == 2.5
    assert c.value(10, "double") == 1e-20  # arrives as the double 1e-20, not a float
    nd_tensor(c.tensor(11), y, FLOAT16)
    nd_tensor(c.tensor(12), idx, INT32)
    nd_tensor(c.tensor(13), norm, FLOAT)
    assert list(y.shape) == [5, 4] and list(norm.shape) == [5, 16]
    for k, t in enumerate((y, idx, norm)):
        out_bytes(t, k)
    c.phases()
    fake.assert_balanced()


@scenario
def gating_bias_outflag_and_strided_view(fake: Fake):
    begin(fake)
    big = torch.randn(8, 32)
    x = big[2:6, ::2]  # storage offset 64, strides [32, 2]
    bias = torch.randn(16)
    y, idx, norm = aclnn().call("npu_moe_gating_top_k", gating_args(x, 2, bias=bias, out_flag=True))
    c = Call(fake, "aclnnMoeGatingTopK")
    xe = c.tensor(0)
    nd_tensor(xe, x, FLOAT)
    assert xe["offset"] == 64 and xe["strides"] == [32, 2] and xe["storage"] == [256]
    assert xe["data"] == big.data_ptr()  # storage base pointer, not data_ptr() of the view
    nd_tensor(c.tensor(1), bias, FLOAT)
    assert c.value(8, "bool") is True and c.args[8]["raw"] == 1
    assert c.value(9, "double") == 1.0
    out_bytes(y, 0), out_bytes(idx, 1), out_bytes(norm, 2)
    fake.assert_balanced()


@scenario
def gating_hash_mode_uses_v2(fake: Fake):
    begin(fake)
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    ids = torch.arange(4, dtype=torch.int64)
    table = torch.zeros(16, 2, dtype=torch.int32)
    outs = aclnn().call("npu_moe_gating_top_k", gating_args(x, 2, input_ids=ids, tid2eid=table,
                                                            routed_scaling_factor=0.5))
    c = Call(fake, "aclnnMoeGatingTopKV2")
    assert c.kinds() == ["aclTensor*"] * 4 + ["int64_t"] * 6 + ["bool", "double", "double"] + ["aclTensor*"] * 3
    nd_tensor(c.tensor(0), x, BF16)
    assert c.null(1)
    nd_tensor(c.tensor(2), ids, INT64)
    nd_tensor(c.tensor(3), table, INT32)
    assert c.value(11, "double") == 0.5 and c.value(12, "double") == 1e-20
    for k, t in enumerate(outs):
        out_bytes(t, k)
    c.phases()
    fake.assert_balanced()


# ------------------------------------------------------------------------------------------ grouped matmul

def gm_args(x, weight, **kw):
    a = dict(x=list(x), weight=list(weight), bias=None, scale=None, offset=None, antiquant_scale=None,
             antiquant_offset=None, per_token_scale=None, group_list=None, activation_input=None,
             activation_quant_scale=None, activation_quant_offset=None, split_item=0, group_type=None,
             group_list_type=0, act_type=0, tuning_config=None, output_dtype=None, x_dtype=None, weight_dtype=None,
             scale_dtype=None, per_token_scale_dtype=None)
    a.update(kw)
    return a


GMM_V4_KINDS = (["aclTensorList*"] * 8 + ["aclTensor*"] + ["aclTensorList*"] * 3 + ["int64_t"] * 4)


def check_gmm_common(c: Call, x, w, gl, split, gtype, gltype):
    nd_tensor(c.items(0)[0], x, BF16 if x.dtype == torch.bfloat16 else FLOAT16)
    for i in (2, 3, 4, 5, 6, 7, 9, 10, 11):
        assert c.null(i), i
    nd_tensor(c.tensor(8), gl, INT64)
    assert [c.value(i, "int64_t") for i in (12, 13, 14, 15)] == [split, gtype, gltype, 0]


@scenario
def grouped_matmul_v5_single_tensor_transposed_weight(fake: Fake):
    begin(fake)
    x = torch.randn(10, 32, dtype=torch.float16)
    w = torch.randn(3, 24, 32, dtype=torch.float16).transpose(1, 2)  # [E, K, N] view of [E, N, K]
    gl = torch.tensor([3, 7, 10])
    (y,) = aclnn().call("npu_grouped_matmul", gm_args([x], [w], group_list=gl, split_item=3, group_type=0))
    c = Call(fake, "aclnnGroupedMatmulV5")
    assert c.kinds() == GMM_V4_KINDS + ["aclIntArray*"] + ["aclTensorList*"] * 3
    check_gmm_common(c, x, w, gl, 3, 0, 0)
    we = c.items(1)[0]
    nd_tensor(we, w, FLOAT16)
    assert we["strides"] == [768, 1, 32]
    assert c.value(16, "aclIntArray*") == [] and not c.null(16)  # empty tuning_config: empty aclIntArray
    (ye,) = c.items(17)
    nd_tensor(ye, y, FLOAT16)
    assert c.null(18) and c.null(19)
    assert list(y.shape) == [10, 24]
    out_bytes(y, 0)
    c.phases()
    fake.assert_balanced()


@scenario
def grouped_matmul_multi_tensor_outputs_in_order(fake: Fake):
    begin(fake)
    xs = [torch.randn(2, 8, dtype=torch.bfloat16), torch.randn(3, 8, dtype=torch.bfloat16)]
    ws = [torch.randn(8, 4, dtype=torch.bfloat16), torch.randn(8, 6, dtype=torch.bfloat16)]
    bias = [torch.randn(4), torch.randn(6)]
    ys = aclnn().call("npu_grouped_matmul", gm_args(xs, ws, bias=bias, split_item=0, group_type=-1,
                                                    tuning_config=[1, 2]))
    c = Call(fake, "aclnnGroupedMatmulV5")
    assert len(c.items(0)) == 2 and len(c.items(1)) == 2
    for ev, t in zip(c.items(2), bias):
        nd_tensor(ev, t, FLOAT)
    assert c.null(8)  # no group list
    assert c.value(13, "int64_t") == -1
    assert c.value(16, "aclIntArray*") == [1, 2]
    assert [list(y.shape) for y in ys] == [[2, 4], [3, 6]]
    for ev, y in zip(c.items(17), ys):
        nd_tensor(ev, y, BF16)
    out_bytes(ys[0], 0), out_bytes(ys[1], 1)
    fake.assert_balanced()


@scenario
def grouped_matmul_split_outputs_per_group(fake: Fake):
    """single x, 3-D weight, split_item 1: one output per group sized by the group list (read on the host)."""
    begin(fake)
    x = torch.randn(7, 8, dtype=torch.float16)
    w = torch.randn(3, 8, 5, dtype=torch.float16)
    gl = torch.tensor([2, 2, 7])  # cumsum: groups of 2, 0 and 5 rows
    ys = aclnn().call("npu_grouped_matmul", gm_args([x], [w], group_list=gl, split_item=1, group_type=0))
    assert [list(y.shape) for y in ys] == [[2, 5], [0, 5], [5, 5]]
    c = Call(fake, "aclnnGroupedMatmulV5")
    assert c.value(12, "int64_t") == 1
    items = c.items(17)
    assert len(items) == 3
    for k, (ev, y) in enumerate(zip(items, ys)):
        nd_tensor(ev, y, FLOAT16)
        out_bytes(y, k)
    fake.assert_balanced()


@scenario
def grouped_matmul_nz_weight_uses_weight_nz(fake: Fake):
    from ascend_moe.formats import set_format
    begin(fake)
    x = torch.randn(6, 40, dtype=torch.float16)
    w = torch.randn(2, 40, 50, dtype=torch.float16)
    set_format(w, "FRACTAL_NZ")
    gl = torch.tensor([2, 4])
    (y,) = aclnn().call("npu_grouped_matmul", gm_args([x], [w], group_list=gl, split_item=3, group_type=0,
                                                      group_list_type=1))
    c = Call(fake, "aclnnGroupedMatmulWeightNz")
    assert c.kinds() == GMM_V4_KINDS + ["aclIntArray*", "int64_t"] + ["aclTensorList*"] * 3
    check_gmm_common(c, x, w, gl, 3, 0, 1)
    # fp16: c0 = 16 -> [E, ceil(50/16), ceil(40/16), 16, 16]
    nz_tensor(c.items(1)[0], w, FLOAT16, [2, 4, 3, 16, 16])
    assert c.value(17, "int64_t") == 0  # quantGroupSize
    out_bytes(y, 0)
    fake.assert_balanced()


@scenario
def grouped_matmul_cast_weight_stays_nz_through_clone_and_parameter(fake: Fake):
    """The weight npu_format_cast returns carries FRACTAL_NZ through clone and nn.Parameter to the
    marshalling: WeightNz with the NZ storage dims, through the public op with backend='aclnn'."""
    import ascend_moe
    begin(fake)
    x = torch.randn(6, 40, dtype=torch.float16)
    w = torch.randn(2, 40, 50, dtype=torch.float16)
    param = torch.nn.Parameter(ascend_moe.npu_format_cast(w, 29).clone(), requires_grad=False)
    gl = torch.tensor([2, 4])
    (y,) = ascend_moe.npu_grouped_matmul([x], [param], group_list=gl, split_item=3, group_type=0, group_list_type=1,
                                         backend="aclnn")
    c = Call(fake, "aclnnGroupedMatmulWeightNz")
    check_gmm_common(c, x, param, gl, 3, 0, 1)
    nz_tensor(c.items(1)[0], param, FLOAT16, [2, 4, 3, 16, 16])  # the clone's own memory
    out_bytes(y, 0)
    fake.assert_balanced()


@scenario
def grouped_matmul_quantised_forms_on_weight_nz(fake: Fake):
    """A8W8 (scale, per_token_scale, bf16 output) and A8W4 (int4 packed in int32, int64 scale: op-plugin's
    quantGroupSize 256) through the public op with backend='aclnn'."""
    import warnings
    import ascend_moe
    begin(fake)
    x = torch.randint(-9, 9, (6, 64), dtype=torch.int8)
    w = ascend_moe.npu_format_cast(torch.randint(-9, 9, (2, 64, 96), dtype=torch.int8), 29)
    scale = torch.rand(2, 96).to(torch.bfloat16)
    pts = torch.rand(6)
    gl = torch.tensor([2, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (y,) = ascend_moe.npu_grouped_matmul([x], [w], scale=[scale], per_token_scale=[pts], group_list=gl,
                                             split_item=2, group_type=0, group_list_type=1,
                                             output_dtype=torch.bfloat16, backend="aclnn")
    c = Call(fake, "aclnnGroupedMatmulWeightNz")
    nd_tensor(c.items(0)[0], x, INT8)
    nz_tensor(c.items(1)[0], w, INT8, [2, 3, 4, 16, 32])      # int8: c0 = 32
    assert c.null(2)                                          # bias
    nd_tensor(c.items(3)[0], scale, BF16)
    nd_tensor(c.items(7)[0], pts, FLOAT)
    nd_tensor(c.tensor(8), gl, INT64)
    assert [c.value(i, "int64_t") for i in (12, 13, 14, 15)] == [2, 0, 1, 0]
    assert c.value(17, "int64_t") == 0                        # quantGroupSize: A8W8
    nd_tensor(c.items(18)[0], y, BF16)
    assert list(y.shape) == [6, 96]
    out_bytes(y, 0)
    fake.assert_balanced()
    begin(fake)
    w4 = ascend_moe.npu_format_cast(torch.zeros(2, 256, 8, dtype=torch.int32), 29)
    xs = torch.zeros(6, 256, dtype=torch.int8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (y4,) = ascend_moe.npu_grouped_matmul([xs], [w4], scale=[torch.zeros(2, 64, dtype=torch.int64)],
                                              bias=[torch.zeros(2, 64)], per_token_scale=[pts], group_list=gl,
                                              split_item=2, group_type=0, group_list_type=1,
                                              output_dtype=torch.bfloat16, backend="aclnn")
    c = Call(fake, "aclnnGroupedMatmulWeightNz")
    assert c.value(17, "int64_t") == 256                      # quantGroupSize: A8W4 without offset
    nd_tensor(c.items(18)[0], y4, BF16)
    assert list(y4.shape) == [6, 64]
    fake.assert_balanced()


@scenario
def grouped_matmul_int_list_uses_v1(fake: Fake):
    from ascend_moe.backends import BackendError
    begin(fake)
    x = torch.randn(6, 8, dtype=torch.float16)
    w = torch.randn(2, 8, 4, dtype=torch.float16)
    (y,) = aclnn().call("npu_grouped_matmul", gm_args([x], [w], group_list=[2, 6], split_item=3, group_type=0))
    c = Call(fake, "aclnnGroupedMatmul")
    assert c.kinds() == ["aclTensorList*"] * 7 + ["aclIntArray*", "int64_t", "aclTensorList*"]
    assert c.value(7, "aclIntArray*") == [2, 6]
    assert c.value(8, "int64_t") == 3
    nd_tensor(c.items(9)[0], y, FLOAT16)
    out_bytes(y, 0)
    fake.assert_balanced()
    begin(fake)
    try:
        aclnn().call("npu_grouped_matmul", gm_args([x.t()], [torch.randn(6, 4, dtype=torch.float16)],
                                                   group_list=[4, 8], split_item=3, group_type=2))
    except BackendError as e:
        assert "group_type=2" in str(e)
    else:
        raise AssertionError("a K split with a List[int] group_list must be refused")
    assert fake.counts()["tensor_create"] == 0


def gmm_args(x, w, **kw):
    a = dict(x=x, weight=w, bias=None, group_list=None, group_type=0, gemm_fusion=False, original_weight=None)
    a.update(kw)
    return a


@scenario
def mindspeed_gmm_list_v2_tensor_v4(fake: Fake):
    begin(fake)
    x = torch.randn(6, 8, dtype=torch.bfloat16)
    w = torch.randn(2, 8, 4, dtype=torch.bfloat16)
    bias = torch.randn(2, 4)
    y = aclnn().call("npu_gmm", gmm_args(x, w, bias=bias, group_list=[1, 6]))
    c = Call(fake, "aclnnGroupedMatmulV2")
    nd_tensor(c.items(2)[0], bias, FLOAT)
    assert c.value(7, "aclIntArray*") == [1, 6] and c.value(8, "int64_t") == 3
    out_bytes(y, 0)
    fake.assert_balanced()
    for op, gltype in (("npu_gmm", 0), ("npu_gmm_v2", 1)):
        begin(fake)
        gl = torch.tensor([1, 6]) if op == "npu_gmm" else torch.tensor([1, 5])
        y = aclnn().call(op, gmm_args(x, w, group_list=gl))
        c = Call(fake, "aclnnGroupedMatmulV4")  # MindSpeed calls V4 directly, never V5
        assert c.kinds() == GMM_V4_KINDS + ["aclTensorList*"] * 3
        check_gmm_common(c, x, w, gl, 3, 0, gltype)
        assert c.null(2)  # no bias: empty list -> nullptr
        assert isinstance(y, torch.Tensor) and list(y.shape) == [6, 4]
        out_bytes(y, 0)
        fake.assert_balanced()


# ------------------------------------------------------------------------------------------ FFN

def ffn_args(x, w1, w2, activation, **kw):
    a = dict(x=x, weight1=w1, weight2=w2, activation=activation, expert_tokens=None, expert_tokens_index=None,
             bias1=None, bias2=None, scale=None, offset=None, deq_scale1=None, deq_scale2=None,
             antiquant_scale1=None, antiquant_scale2=None, antiquant_offset1=None, antiquant_offset2=None,
             inner_precise=None, output_dtype=None)
    a.update(kw)
    return a


FFN_KINDS = ["aclTensor*"] * 3 + ["aclIntArray*"] + ["aclTensor*"] * 10 + ["char*", "int64_t", "bool", "aclTensor*"]


@scenario
def ffn_v2_expert_tokens_and_index(fake: Fake):
    x = torch.randn(6, 16, dtype=torch.float16)
    w1 = torch.randn(2, 16, 32, dtype=torch.float16)
    w2 = torch.randn(2, 32, 16, dtype=torch.float16)
    b1 = torch.randn(2, 32, dtype=torch.float16)
    for tokens_key, flag in (("expert_tokens", False), ("expert_tokens_index", True)):
        begin(fake)
        y = aclnn().call("npu_ffn", ffn_args(x, w1, w2, "fastgelu", bias1=b1, inner_precise=1,
                                             **{tokens_key: [2, 4] if not flag else [2, 6]}))
        c = Call(fake, "aclnnFFNV2")
        assert c.kinds() == FFN_KINDS
        nd_tensor(c.tensor(0), x, FLOAT16)
        nd_tensor(c.tensor(1), w1, FLOAT16)
        nd_tensor(c.tensor(2), w2, FLOAT16)
        assert c.value(3, "aclIntArray*") == ([2, 4] if not flag else [2, 6])
        nd_tensor(c.tensor(4), b1, FLOAT16)
        for i in range(5, 14):
            assert c.null(i), i
        assert c.value(14, "char*") == "fastgelu"
        assert c.value(15, "int64_t") == 1
        assert c.value(16, "bool") is flag and c.args[16]["raw"] == int(flag)
        nd_tensor(c.tensor(17), y, FLOAT16)
        out_bytes(y, 0)
        c.phases()
        fake.assert_balanced()
    begin(fake)
    x2 = torch.randn(3, 5, 16, dtype=torch.float16)
    y = aclnn().call("npu_ffn", ffn_args(x2, w1[0], w2[0], "relu"))
    c = Call(fake, "aclnnFFNV2")
    # neither expert_tokens nor expert_tokens_index: an empty aclIntArray (op-plugin's IntArrayRef{}), not nullptr
    assert not c.null(3) and c.value(3, "aclIntArray*") == []
    assert c.value(15, "int64_t") == 0 and c.value(16, "bool") is False
    assert list(y.shape) == [3, 5, 16]
    out_bytes(y, 0)
    fake.assert_balanced()


# ------------------------------------------------------------------------------------------ swiglu quant

@scenario
def swiglu_v1_weight_nz(fake: Fake):
    from ascend_moe.formats import set_format
    begin(fake)
    x = torch.randint(-5, 5, (7, 64), dtype=torch.int8)
    w = torch.randint(-5, 5, (2, 64, 96), dtype=torch.int8)
    set_format(w, "FRACTAL_NZ")
    ws_ = torch.rand(2, 96)
    xs_ = torch.rand(7)
    gl = torch.tensor([3, 7])
    args = dict(x=x, weight=w, group_list=gl, weight_scale=ws_, x_scale=xs_, bias=None, offset=None)
    out, scale, off = aclnn().call("npu_grouped_matmul_swiglu_quant", args)
    c = Call(fake, "aclnnGroupedMatmulSwigluQuantWeightNZ")
    assert c.kinds() == ["aclTensor*"] * 10
    nd_tensor(c.tensor(0), x, INT8)
    nz_tensor(c.tensor(1), w, INT8, [2, 3, 4, 16, 32])  # int8: c0 = 32 -> [E, 96/32, 64/16, 16, 32]
    assert c.null(2) and c.null(3)
    nd_tensor(c.tensor(4), ws_, FLOAT)
    nd_tensor(c.tensor(5), xs_, FLOAT)
    nd_tensor(c.tensor(6), gl, INT64)
    nd_tensor(c.tensor(7), out, INT8)
    nd_tensor(c.tensor(8), scale, FLOAT)
    nd_tensor(c.tensor(9), off, FLOAT)
    assert list(out.shape) == [7, 48] and list(scale.shape) == [7] and list(off.shape) == []
    for k, t in enumerate((out, scale, off)):
        out_bytes(t, k)
    c.phases()
    fake.assert_balanced()


def swiglu_v2_args(x, w, ws_, xs_, gl, **kw):
    a = dict(x=x, weight=[w], weight_scale=[ws_], x_scale=xs_, group_list=gl, smooth_scale=None,
             weight_assist_matrix=None, bias=None, dequant_mode=0, dequant_dtype=0, quant_mode=0, quant_dtype=1,
             group_list_type=0, tuning_config=None, x_dtype=None, weight_dtype=None, weight_scale_dtype=None,
             x_scale_dtype=None)
    a.update(kw)
    return a


SWIGLU_V2_KINDS = (["aclTensor*"] + ["aclTensorList*"] * 3 + ["aclTensor*"] * 4 + ["int64_t"] * 4 +
                   ["aclIntArray*", "aclTensor*", "aclTensor*"])


@scenario
def swiglu_v2_nd_and_nz(fake: Fake):
    from ascend_moe.formats import set_format
    x = torch.randint(-5, 5, (5, 32), dtype=torch.int8)
    ws_ = torch.rand(2, 64)
    xs_ = torch.rand(5)
    gl = torch.tensor([2, 3])
    for nz in (False, True):
        begin(fake)
        w = torch.randint(-5, 5, (2, 32, 64), dtype=torch.int8)
        if nz:
            set_format(w, "FRACTAL_NZ")
        assist = torch.rand(2, 64)
        out, scale = aclnn().call("npu_grouped_matmul_swiglu_quant_v2", swiglu_v2_args(
            x, w, ws_, xs_, gl, weight_assist_matrix=[assist], dequant_mode=1, dequant_dtype=15, quant_mode=1,
            group_list_type=1))
        c = Call(fake, "aclnnGroupedMatmulSwigluQuantWeightNzV2" if nz else "aclnnGroupedMatmulSwigluQuantV2")
        assert c.kinds() == SWIGLU_V2_KINDS
        nd_tensor(c.tensor(0), x, INT8)
        if nz:
            nz_tensor(c.items(1)[0], w, INT8, [2, 2, 2, 16, 32])
        else:
            nd_tensor(c.items(1)[0], w, INT8)
        nd_tensor(c.items(2)[0], ws_, FLOAT)
        nd_tensor(c.items(3)[0], assist, FLOAT)
        assert c.null(4) and c.null(6)  # bias, smooth_scale
        nd_tensor(c.tensor(5), xs_, FLOAT)
        nd_tensor(c.tensor(7), gl, INT64)
        # dequant_dtype 15 (torch bfloat16 enum) -> GE ACL_BF16 27, as op-plugin maps it
        assert [c.value(i, "int64_t") for i in (8, 9, 10, 11)] == [1, 27, 1, 1]
        assert c.value(12, "aclIntArray*") == []
        nd_tensor(c.tensor(13), out, INT8)
        nd_tensor(c.tensor(14), scale, FLOAT)
        out_bytes(out, 0), out_bytes(scale, 1)
        c.phases()
        fake.assert_balanced()


# ------------------------------------------------------------------------------------------ finalize routing

def fr_args(x, w, gl, **kw):
    a = dict(x=x, w=w, group_list=gl, scale=None, bias=None, offset=None, pertoken_scale=None, shared_input=None,
             logit=None, row_index=None, dtype=None, shared_input_weight=1.0, shared_input_offset=0, output_bs=0,
             group_list_type=1, tuning_config=None, x_dtype=None, w_dtype=None, scale_dtype=None,
             pertoken_scale_dtype=None)
    a.update(kw)
    return a


FR_V2_KINDS = ["aclTensor*"] * 12 + ["int64_t", "float", "int64_t", "bool", "bool", "int64_t"]


def fr_inputs():
    x = torch.randint(-5, 5, (6, 32), dtype=torch.int8)
    w = torch.randint(-5, 5, (2, 32, 48), dtype=torch.int8)
    scale = torch.rand(2, 48)
    pts = torch.rand(6)
    gl = torch.tensor([2, 4])
    shared = torch.randn(3, 48, dtype=torch.bfloat16)
    logit = torch.rand(6)
    rows = torch.tensor([0, 3, 1, 2, 4, 5], dtype=torch.int64)
    return x, w, scale, pts, gl, shared, logit, rows


@scenario
def finalize_routing_v3_float_weight(fake: Fake):
    begin(fake)
    x, w, scale, pts, gl, shared, logit, rows = fr_inputs()
    y = aclnn().call("npu_grouped_matmul_finalize_routing", fr_args(
        x, w, gl, scale=scale, pertoken_scale=pts, shared_input=shared, logit=logit, row_index=rows,
        shared_input_weight=0.1, shared_input_offset=2, output_bs=8))
    c = Call(fake, "aclnnGroupedMatmulFinalizeRoutingV3")
    assert c.kinds() == FR_V2_KINDS + ["aclIntArray*", "aclTensor*"]
    nd_tensor(c.tensor(0), x, INT8)
    nd_tensor(c.tensor(1), w, INT8)
    nd_tensor(c.tensor(2), scale, FLOAT)
    assert c.null(3) and c.null(4) and c.null(5) and c.null(6)  # bias, offset, antiquant scale/offset
    nd_tensor(c.tensor(7), pts, FLOAT)
    nd_tensor(c.tensor(8), gl, INT64)
    nd_tensor(c.tensor(9), shared, BF16)
    nd_tensor(c.tensor(10), logit, FLOAT)
    nd_tensor(c.tensor(11), rows, INT64)
    assert c.value(12, "int64_t") == 0  # dtype: always float32
    siw = c.value(13, "float")  # sharedInputWeight arrives as the float nearest 0.1
    assert siw == float(torch.tensor(0.1, dtype=torch.float32)) and siw != 0.1
    assert c.value(14, "int64_t") == 2
    assert c.value(15, "bool") is False and c.value(16, "bool") is False
    assert c.value(17, "int64_t") == 1  # group_list_type default 1
    assert c.value(18, "aclIntArray*") == []
    nd_tensor(c.tensor(19), y, FLOAT)
    assert list(y.shape) == [8, 48]
    out_bytes(y, 0)
    c.phases()
    fake.assert_balanced()


@scenario
def finalize_routing_nz_uses_weight_nz_v2(fake: Fake):
    from ascend_moe.formats import set_format
    begin(fake)
    x, w, scale, pts, gl, shared, logit, rows = fr_inputs()
    set_format(w, "FRACTAL_NZ")
    y = aclnn().call("npu_grouped_matmul_finalize_routing", fr_args(
        x, w, gl, scale=scale, pertoken_scale=pts, row_index=rows, shared_input_weight=2.5, group_list_type=0))
    c = Call(fake, "aclnnGroupedMatmulFinalizeRoutingWeightNzV2")
    assert c.kinds() == FR_V2_KINDS + ["aclIntArray*", "aclTensor*"]
    nz_tensor(c.tensor(1), w, INT8, [2, 2, 2, 16, 32])
    assert c.null(9) and c.null(10)
    assert c.value(13, "float") == 2.5 and c.value(17, "int64_t") == 0
    out_bytes(y, 0)
    fake.assert_balanced()


# ------------------------------------------------------------------------------------------ failures, workspace

def expect_aclnn_error(fn, status: int, entry: str, *fragments: str):
    import ascend_moe._C as C
    try:
        fn()
    except C.AclnnError as e:  # noqa: PERF203
        assert isinstance(e, RuntimeError)
        assert e.status == status and e.entry_point == entry, (e.status, e.entry_point)
        for f in fragments:
            assert f in str(e), (f, str(e))
        return e
    raise AssertionError("no AclnnError raised")


def _gating_call():
    return aclnn().call("npu_moe_gating_top_k", gating_args(torch.randn(3, 8), 2))


@scenario
def failing_phase1_destroys_everything(fake: Fake):
    begin(fake)
    fake.fail("aclnnMoeGatingTopKGetWorkspaceSize", 161002, "k must be <= 8")
    expect_aclnn_error(_gating_call, 161002, "aclnnMoeGatingTopKGetWorkspaceSize", "161002",
                       "ACLNN_ERR_PARAM_INVALID", "k must be <= 8")
    assert not fake.runs() and fake.counts()["malloc"] == 0
    assert fake.counts()["tensor_create"] == 4
    fake.assert_balanced()


@scenario
def failing_phase2_destroys_and_frees(fake: Fake):
    x = torch.randn(4, 8, dtype=torch.float16)
    w = torch.randn(2, 8, 4, dtype=torch.float16)
    for status, name in ((361001, "ACLNN_ERR_RUNTIME_ERROR"), (561103, "ACLNN_ERR_INNER"),
                         (161001, "ACLNN_ERR_PARAM_NULLPTR")):
        begin(fake)
        fake.fail("aclnnGroupedMatmulV5", status, "device says no")
        expect_aclnn_error(lambda: aclnn().call("npu_grouped_matmul", gm_args(
            [x], [w], group_list=torch.tensor([1, 4]), split_item=3, group_type=0)),
            status, "aclnnGroupedMatmulV5", str(status), name, "device says no")
        c = fake.counts()
        assert c["list_create"] == 3 and c["executor_create"] == 1 and c["malloc"] == 1
        fake.assert_balanced()


@scenario
def failing_workspace_malloc_releases_executor(fake: Fake):
    begin(fake)
    fake.fail("aclrtMalloc", 200000, "out of device memory")
    expect_aclnn_error(_gating_call, 200000, "aclrtMalloc", "ACL_ERROR_BAD_ALLOC", "out of device memory")
    assert not fake.runs()
    fake.assert_balanced()  # the executor phase 2 never got is destroyed with aclDestroyAclOpExecutor


@scenario
def zero_workspace_passes_nullptr(fake: Fake):
    begin(fake)
    fake.set_workspace(0)
    _gating_call()
    run = fake.runs()[0]
    assert run["workspace"] == 0 and run["workspace_size"] == 0 and fake.counts()["malloc"] == 0
    fake.assert_balanced()


@scenario
def workspace_callback_and_stream_hooks(fake: Fake):
    mod = aclnn()
    keep = []

    def alloc(size):
        t = torch.empty(size, dtype=torch.uint8)
        keep.append(t)
        return t.data_ptr(), t

    begin(fake)
    fake.set_workspace(1000)
    old = mod.CPU_WORKSPACE_ALLOCATOR, mod.CPU_STREAM
    mod.CPU_WORKSPACE_ALLOCATOR, mod.CPU_STREAM = alloc, 0x5150
    try:
        _gating_call()
    finally:
        mod.CPU_WORKSPACE_ALLOCATOR, mod.CPU_STREAM = old
    run = fake.runs()[0]
    assert run["workspace"] == keep[0].data_ptr() and run["workspace_size"] == 1000 and keep[0].numel() == 1000
    assert run["stream"] == 0x5150
    assert (keep[0].numpy() == 0xAB).all()  # the fake wrote the workspace it was given
    assert fake.counts()["malloc"] == 0 and fake.counts()["sync"] == 0
    assert mod.last_call["workspace"] == "callback"
    fake.assert_balanced()


@scenario
def torch_npu_mode_plumbing(fake: Fake):
    """The path NPU tensors take inside a torch_npu process, with torch_npu stood in for: the stream is
    torch.npu.current_stream().npu_stream, the workspace comes from the allocator callback (no
    aclrtMalloc, no synchronisation), and aclInit / aclrtSetDevice / aclFinalize are left to torch_npu."""
    import contextlib
    import types
    mod = aclnn()
    keep = []

    def npu_context(device):
        def alloc(size):
            t = torch.empty(size, dtype=torch.uint8)
            keep.append(t)
            return t.untyped_storage().data_ptr(), t
        return contextlib.nullcontext(), alloc

    stream = types.SimpleNamespace(npu_stream=0x7700)
    saved = mod.NPU_DEVICE_TYPES, mod._npu_context, torch.__dict__.get("npu")
    mod.NPU_DEVICE_TYPES, mod._npu_context = ("cpu",), npu_context
    torch.npu = types.SimpleNamespace(current_stream=lambda: stream)
    begin(fake)
    fake.set_workspace(512)
    try:
        y, idx, norm = mod.call("npu_moe_gating_top_k", gating_args(torch.randn(3, 8), 2))
    finally:
        mod.NPU_DEVICE_TYPES, mod._npu_context = saved[0], saved[1]
        if saved[2] is None:
            del torch.npu
        else:
            torch.npu = saved[2]
    run = fake.runs()[0]
    assert run["stream"] == 0x7700 and run["workspace"] == keep[0].data_ptr() and keep[0].numel() == 512
    c = fake.counts()
    assert c["init"] == 0 and c["set_device"] == 0 and c["malloc"] == 0 and c["sync"] == 0
    assert not any(e["ev"] == "aclFinalize" for e in fake.events())
    out_bytes(y, 0), out_bytes(idx, 1), out_bytes(norm, 2)
    fake.assert_balanced()


@scenario
def init_and_device_once(fake: Fake):
    _gating_call()  # aclInit / aclrtSetDevice happen at the first standalone call of the process, at most
    begin(fake)
    _gating_call()
    _gating_call()
    c = fake.counts()
    assert c["init"] == 0 and c["set_device"] == 0  # aclInit / aclrtSetDevice already done earlier
    assert not any(e["ev"] == "aclFinalize" for e in fake.events())


@scenario
def public_ops_end_to_end(fake: Fake):
    """Every public op with backend='aclnn' on CPU tensors: checker, policy (fake runtime accepted),
    shape rule, entry point, and the fake's bytes in the returned tensors."""
    import warnings
    import ascend_moe
    from ascend_moe.backends import select_backend
    assert select_backend("npu_ffn", [torch.zeros(1)], "aclnn") == "aclnn"
    mod = aclnn()
    x = torch.randn(6, 16, dtype=torch.float16)
    w = torch.randn(2, 16, 8, dtype=torch.float16)
    xi = torch.randint(-5, 5, (6, 64), dtype=torch.int8)
    wnz = ascend_moe.npu_format_cast(torch.randint(-5, 5, (2, 64, 96), dtype=torch.int8), 29)
    wf = ascend_moe.npu_format_cast(torch.randint(-5, 5, (2, 64, 256), dtype=torch.int8), 29)
    cases = [
        ("aclnnMoeGatingTopK", lambda: ascend_moe.npu_moe_gating_top_k(
            torch.randn(4, 16), 2, norm_type=1, routed_scaling_factor=2.5, backend="aclnn")),
        ("aclnnGroupedMatmulV2", lambda: [ascend_moe.npu_gmm(x, w, group_list=[2, 6], backend="aclnn")]),
        ("aclnnGroupedMatmulV4", lambda: [ascend_moe.npu_gmm_v2(x, w, group_list=torch.tensor([2, 4]),
                                                                backend="aclnn")]),
        ("aclnnGroupedMatmulV5", lambda: ascend_moe.npu_grouped_matmul(
            [x], [w], group_list=torch.tensor([2, 6]), split_item=3, group_type=0, backend="aclnn")),
        ("aclnnFFNV2", lambda: [ascend_moe.npu_ffn(x, torch.randn(16, 32, dtype=torch.float16),
                                                   torch.randn(32, 16, dtype=torch.float16), "relu",
                                                   backend="aclnn")]),
        ("aclnnGroupedMatmulSwigluQuantWeightNZ", lambda: ascend_moe.npu_grouped_matmul_swiglu_quant(
            xi, wnz, torch.tensor([2, 6]), torch.rand(2, 96), torch.rand(6), backend="aclnn")),
        ("aclnnGroupedMatmulSwigluQuantWeightNzV2", lambda: ascend_moe.npu_grouped_matmul_swiglu_quant_v2(
            xi, [wnz], [torch.rand(2, 96)], torch.rand(6), torch.tensor([2, 6]), backend="aclnn")),
        ("aclnnGroupedMatmulFinalizeRoutingWeightNzV2", lambda: [ascend_moe.npu_grouped_matmul_finalize_routing(
            xi, wf, torch.tensor([2, 4]), scale=torch.rand(2, 256), pertoken_scale=torch.rand(6),
            row_index=torch.arange(6), logit=torch.rand(6), shared_input_weight=0.5, backend="aclnn")]),
    ]
    for entry, fn in cases:
        begin(fake)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # doc-only rule warnings are not the subject here
            outs = fn()
        assert mod.last_call["entry_point"] == entry, (entry, mod.last_call)
        Call(fake, entry).phases()
        for k, t in enumerate(outs):
            out_bytes(t, k)
        fake.assert_balanced()
    begin(fake)
    y, _, _ = ascend_moe.npu_moe_gating_top_k(torch.randn(4, 16), 2, norm_type=1, routed_scaling_factor=2.5,
                                              backend="aclnn")
    assert Call(fake, "aclnnMoeGatingTopK").value(9, "double") == 2.5


@scenario
def dtype_overrides_are_refused(fake: Fake):
    from ascend_moe.backends import BackendError
    begin(fake)
    x, w, scale, pts, gl, shared, logit, rows = fr_inputs()
    try:
        aclnn().call("npu_grouped_matmul_finalize_routing", fr_args(x, w, gl, scale=scale, w_dtype=290))
    except BackendError as e:
        assert "w_dtype=290" in str(e)
    else:
        raise AssertionError("dtype overrides must be refused")
    assert fake.counts()["tensor_create"] == 0


@scenario
def info_lists_entry_points(fake: Fake):
    import contextlib
    import io
    from ascend_moe.backends import aclnn_status
    from ascend_moe.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["info"])
    text = buf.getvalue()
    assert "CANN       found (fake test runtime)" in text, text
    assert "aclnnGroupedMatmulV5" in text and "aclnnFFNV2" in text
    # per op and call family, the entry point that would be used (the newest that resolves)
    assert "gmm: aclnnGroupedMatmulV5; gmm_nz: aclnnGroupedMatmulWeightNz" in text, text
    assert "finalize: aclnnGroupedMatmulFinalizeRoutingV3; finalize_nz: " \
           "aclnnGroupedMatmulFinalizeRoutingWeightNzV2" in text, text
    eps = aclnn_status.entry_points("npu_grouped_matmul_finalize_routing")
    assert [n for n, _, _ in eps] == ["aclnnGroupedMatmulFinalizeRoutingV3", "aclnnGroupedMatmulFinalizeRoutingV2",
                                      "aclnnGroupedMatmulFinalizeRoutingWeightNzV2",
                                      "aclnnGroupedMatmulFinalizeRoutingWeightNz"]
    assert all(found for _, found, _ in eps)
    rep = aclnn_status.loader_report()
    assert rep["ok"] and rep["fake_runtime"] and rep["symbols"]["aclnnFFNV2"]["found"]
    assert aclnn_status.aclnn_unavailable_reason("npu_ffn") is None
    import ascend_moe._C as C
    assert C.soc_name() == "Ascend910B2"


# ------------------------------------------------------------------------------------------ quantised path

@scenario
def swiglu_and_backward_pass_dim_as_int64(fake: Fake):
    import ascend_moe
    begin(fake)
    x = torch.randn(4, 6, 8, dtype=torch.bfloat16)
    y = ascend_moe.npu_swiglu(x, dim=1, backend="aclnn")
    c = Call(fake, "aclnnSwiGlu")
    assert c.kinds() == ["aclTensor*", "int64_t", "aclTensor*"]
    nd_tensor(c.tensor(0), x, BF16)
    assert c.value(1, "int64_t") == 1
    nd_tensor(c.tensor(2), y, BF16)
    assert list(y.shape) == [4, 3, 8]
    out_bytes(y, 0)
    c.phases()
    fake.assert_balanced()
    begin(fake)
    g = torch.randn(4, 3, 8, dtype=torch.bfloat16)
    dx = ascend_moe.npu_swiglu_backward(g, x, dim=-2, backend="aclnn")
    c = Call(fake, "aclnnSwiGluGrad")
    assert c.kinds() == ["aclTensor*", "aclTensor*", "int64_t", "aclTensor*"]
    nd_tensor(c.tensor(0), g, BF16)
    nd_tensor(c.tensor(1), x, BF16)
    assert c.value(2, "int64_t") == -2      # passed as given; the kernel wraps it
    nd_tensor(c.tensor(3), dx, BF16)
    out_bytes(dx, 0)
    fake.assert_balanced()


@scenario
def dynamic_quant_uses_v2_with_null_offset(fake: Fake):
    import ascend_moe
    begin(fake)
    x = torch.randn(6, 32, dtype=torch.float16)
    smooth = torch.rand(2, 32, dtype=torch.float16) + 0.5
    gi = torch.tensor([2, 6], dtype=torch.int32)
    y, scale = ascend_moe.npu_dynamic_quant(x, smooth_scales=smooth, group_index=gi, backend="aclnn")
    c = Call(fake, "aclnnDynamicQuantV2")
    assert c.kinds() == ["aclTensor*"] * 3 + ["int64_t"] + ["aclTensor*"] * 3
    nd_tensor(c.tensor(0), x, FLOAT16)
    nd_tensor(c.tensor(1), smooth, FLOAT16)
    nd_tensor(c.tensor(2), gi, INT32)
    assert c.value(3, "int64_t") == INT8            # dstType = aclDataType of y
    nd_tensor(c.tensor(4), y, INT8)
    nd_tensor(c.tensor(5), scale, FLOAT)
    assert c.null(6)                               # offset nullptr = symmetric
    assert list(y.shape) == [6, 32] and list(scale.shape) == [6]
    out_bytes(y, 0), out_bytes(scale, 1)
    c.phases()
    fake.assert_balanced()
    # int4 packed in int32 (dst_type=torch.quint4x2): y int32 [..., H/8], dstType ACL_INT32
    begin(fake)
    y4, s4 = ascend_moe.npu_dynamic_quant(x.reshape(2, 3, 32), dst_type=torch.quint4x2, backend="aclnn")
    c = Call(fake, "aclnnDynamicQuantV2")
    assert c.value(3, "int64_t") == INT32 and c.null(1) and c.null(2)
    nd_tensor(c.tensor(4), y4, INT32)
    assert list(y4.shape) == [2, 3, 4] and list(s4.shape) == [2, 3]
    fake.assert_balanced()
    # asymmetric: the offset output is passed
    begin(fake)
    ya, sa, oa = ascend_moe.npu_dynamic_quant_asymmetric(x, backend="aclnn")
    c = Call(fake, "aclnnDynamicQuantV2")
    nd_tensor(c.tensor(6), oa, FLOAT)
    for k, t in enumerate((ya, sa, oa)):
        out_bytes(t, k)
    fake.assert_balanced()


@scenario
def dequant_swiglu_quant_v2_fixed_a2a3_arguments(fake: Fake):
    import ascend_moe
    begin(fake)
    x = torch.randint(-1000, 1000, (6, 128), dtype=torch.int32)
    ws = torch.rand(2, 128)
    act = torch.rand(6)
    gi = torch.tensor([2, 4])
    y, scale = ascend_moe.npu_dequant_swiglu_quant(x, weight_scale=ws, activation_scale=act, group_index=gi,
                                                   activate_left=True, quant_mode=1, backend="aclnn")
    c = Call(fake, "aclnnDequantSwigluQuantV2")
    assert c.kinds() == ["aclTensor*"] * 7 + ["bool", "char*", "int64_t", "char*", "int64_t", "int64_t",
                                              "double", "double", "double", "aclTensor*", "aclTensor*"]
    nd_tensor(c.tensor(0), x, INT32)
    nd_tensor(c.tensor(1), ws, FLOAT)
    nd_tensor(c.tensor(2), act, FLOAT)
    assert c.null(3) and c.null(4) and c.null(5)
    nd_tensor(c.tensor(6), gi, INT64)
    assert c.value(7, "bool") is True and c.args[7]["raw"] == 1
    assert c.value(8, "char*") == "dynamic"
    assert c.value(9, "int64_t") == 2 and c.value(10, "char*") == "rint" and c.value(11, "int64_t") == -1
    assert c.value(12, "int64_t") == 0
    assert c.value(13, "double") == 7.0 and c.value(14, "double") == 1.702 and c.value(15, "double") == 1.0
    nd_tensor(c.tensor(16), y, INT8)
    nd_tensor(c.tensor(17), scale, FLOAT)
    assert list(y.shape) == [6, 64]
    out_bytes(y, 0), out_bytes(scale, 1)
    c.phases()
    fake.assert_balanced()


@scenario
def grouped_matmul_add_in_place(fake: Fake):
    """npu_grouped_matmul_add_ writes into y itself (yRef is y's storage); A2/A3 take aclnnGroupedMatmulAdd
    without groupListType, the 950 V2 with it."""
    import ascend_moe
    begin(fake)
    x = torch.randn(12, 8, dtype=torch.bfloat16)
    w = torch.randn(12, 16, dtype=torch.bfloat16)
    gl = torch.tensor([5, 5, 12])
    y = torch.zeros(3, 8, 16)
    out = aclnn().grouped_matmul_add_(y, x, w, gl)
    assert out is y
    c = Call(fake, "aclnnGroupedMatmulAdd")
    assert c.kinds() == ["aclTensor*"] * 4 + ["bool", "bool", "int64_t"]
    nd_tensor(c.tensor(0), x, BF16)
    nd_tensor(c.tensor(1), w, BF16)
    nd_tensor(c.tensor(2), gl, INT64)
    nd_tensor(c.tensor(3), y, FLOAT)
    assert c.value(4, "bool") is True and c.value(5, "bool") is False and c.value(6, "int64_t") == 2
    out_bytes(y, 0)                          # the fake's bytes arrived in y itself
    c.phases()
    fake.assert_balanced()
    begin(fake)
    with ascend_moe.target("ascend-950"):
        aclnn().grouped_matmul_add_(torch.zeros(3, 8, 16), x, w, gl, group_list_type=0)
    c = Call(fake, "aclnnGroupedMatmulAddV2")
    assert c.kinds() == ["aclTensor*"] * 4 + ["bool", "bool", "int64_t", "int64_t"]
    assert c.value(7, "int64_t") == 0
    fake.assert_balanced()
    begin(fake)
    try:
        aclnn().grouped_matmul_add_(torch.zeros(3, 8, 16), x, w, torch.tensor([5, 4, 12]))
    except ascend_moe.ConstraintError as e:
        assert "non-decreasing" in str(e)
    else:
        raise AssertionError("a decreasing group_list must be refused by the checker")
    assert not fake.gws()


@scenario
def grouped_matmul_add_declared_ops(fake: Fake):
    """The declared ops (public, backend='aclnn') build the same calls from their declaration: yRef is self's
    storage; the in-place op returns self, the out-of-place one writes self too and returns a clone."""
    import ascend_moe
    begin(fake)
    x = torch.randn(12, 8, dtype=torch.bfloat16)
    w = torch.randn(12, 16, dtype=torch.bfloat16)
    gl = torch.tensor([5, 5, 12])
    y = torch.zeros(3, 8, 16)
    assert ascend_moe.npu_grouped_matmul_add_(y, x, w, gl, backend="aclnn") is y
    c = Call(fake, "aclnnGroupedMatmulAdd")
    assert c.kinds() == ["aclTensor*"] * 4 + ["bool", "bool", "int64_t"]
    nd_tensor(c.tensor(0), x, BF16)
    nd_tensor(c.tensor(1), w, BF16)
    nd_tensor(c.tensor(2), gl, INT64)
    nd_tensor(c.tensor(3), y, FLOAT)
    assert c.value(4, "bool") is True and c.value(5, "bool") is False and c.value(6, "int64_t") == 2
    out_bytes(y, 0)
    fake.assert_balanced()
    begin(fake)
    y2 = torch.zeros(3, 8, 16)
    out = ascend_moe.npu_grouped_matmul_add(y2, x, w, gl, backend="aclnn")
    c = Call(fake, "aclnnGroupedMatmulAdd")
    nd_tensor(c.tensor(3), y2, FLOAT)
    out_bytes(y2, 0)
    assert out is not y2 and torch.equal(out, y2) and out.data_ptr() != y2.data_ptr()
    fake.assert_balanced()
    begin(fake)
    with ascend_moe.target("ascend-950"):
        ascend_moe.npu_grouped_matmul_add_(torch.zeros(3, 8, 16), x, w, gl, backend="aclnn")
    c = Call(fake, "aclnnGroupedMatmulAddV2")
    assert c.kinds() == ["aclTensor*"] * 4 + ["bool", "bool", "int64_t", "int64_t"]
    assert c.value(7, "int64_t") == 0
    fake.assert_balanced()


# ------------------------------------------------------------------------------------------ old CANN build
# libopapi.so built without V5, FinalizeRoutingV3, FinalizeRoutingWeightNzV2 and without
# aclnnGroupedMatmulWeightNzGetWorkspaceSize (its phase-2 symbol is still there); aclInit answers 100002.

OLD_CANN_OMIT = ("aclnnMoeFinalizeRoutingV4", "aclnnMoeFinalizeRoutingV4GetWorkspaceSize",
                 "aclnnGroupedMatmulV5", "aclnnGroupedMatmulV5GetWorkspaceSize",
                 "aclnnGroupedMatmulFinalizeRoutingV3", "aclnnGroupedMatmulFinalizeRoutingV3GetWorkspaceSize",
                 "aclnnGroupedMatmulFinalizeRoutingWeightNzV2",
                 "aclnnGroupedMatmulFinalizeRoutingWeightNzV2GetWorkspaceSize",
                 "aclnnGroupedMatmulWeightNzGetWorkspaceSize",
                 "aclnnDynamicQuantV2", "aclnnDynamicQuantV2GetWorkspaceSize",
                 "aclnnDequantSwigluQuantV2", "aclnnDequantSwigluQuantV2GetWorkspaceSize",
                 "aclnnMoeDistributeDispatchV4", "aclnnMoeDistributeDispatchV4GetWorkspaceSize",
                 "aclnnMoeDistributeDispatchV3", "aclnnMoeDistributeDispatchV3GetWorkspaceSize",
                 "aclnnMoeDistributeCombineV4", "aclnnMoeDistributeCombineV4GetWorkspaceSize",
                 "aclnnMoeDistributeCombineV3", "aclnnMoeDistributeCombineV3GetWorkspaceSize")


@old_cann
def old_init_100002_tolerated_and_gmm_falls_back_to_v4(fake: Fake):
    begin(fake)
    fake.fail("aclInit", 100002, "already initialised")  # first call of this process
    x = torch.randn(4, 8, dtype=torch.float16)
    w = torch.randn(2, 8, 4, dtype=torch.float16)
    gl = torch.tensor([1, 4])
    (y,) = aclnn().call("npu_grouped_matmul", gm_args([x], [w], group_list=gl, split_item=3, group_type=0))
    assert fake.counts()["init"] == 1
    c = Call(fake, "aclnnGroupedMatmulV4")
    assert c.kinds() == GMM_V4_KINDS + ["aclTensorList*"] * 3  # no tuningConfig in V4
    check_gmm_common(c, x, w, gl, 3, 0, 0)
    out_bytes(y, 0)
    fake.assert_balanced()
    from ascend_moe.backends import aclnn_status
    eps = dict((n, (f, d)) for n, f, d in aclnn_status.entry_points("npu_grouped_matmul"))
    assert eps["aclnnGroupedMatmulV5"][0] is False and "aclnnGroupedMatmulV5GetWorkspaceSize" in \
        eps["aclnnGroupedMatmulV5"][1]
    assert eps["aclnnGroupedMatmulV4"][0] is True
    # info's "would use" column follows the same fallback
    plan = {fam: chosen for fam, chosen, _ in aclnn_status.entry_point_plan("npu_grouped_matmul")}
    assert plan["gmm"] == "aclnnGroupedMatmulV4" and plan["gmm_nz"] is None


@old_cann
def old_finalize_falls_back_v3_to_v2_and_nzv2_to_nz(fake: Fake):
    from ascend_moe.backends import BackendError
    from ascend_moe.formats import set_format
    begin(fake)
    x, w, scale, pts, gl, shared, logit, rows = fr_inputs()
    y = aclnn().call("npu_grouped_matmul_finalize_routing", fr_args(
        x, w, gl, scale=scale, pertoken_scale=pts, row_index=rows, shared_input_weight=0.25))
    c = Call(fake, "aclnnGroupedMatmulFinalizeRoutingV2")
    assert c.kinds() == FR_V2_KINDS + ["aclTensor*"]
    assert c.value(13, "float") == 0.25
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aclnn().call("npu_grouped_matmul_finalize_routing", fr_args(x, w, gl, scale=scale, tuning_config=[4]))
    assert any("tuning_config" in str(wm.message) for wm in caught)
    nd_tensor(c.tensor(18), y, FLOAT)
    out_bytes(y, 0)
    fake.assert_balanced()

    begin(fake)
    set_format(w, "FRACTAL_NZ")
    y = aclnn().call("npu_grouped_matmul_finalize_routing", fr_args(
        x, w, gl, scale=scale, pertoken_scale=pts, shared_input=shared, logit=logit, row_index=rows,
        shared_input_weight=0.5, shared_input_offset=1, output_bs=6))
    c = Call(fake, "aclnnGroupedMatmulFinalizeRoutingWeightNz")
    assert c.kinds() == ["aclTensor*"] * 9 + ["int64_t", "float", "int64_t", "bool", "bool", "int64_t",
                                              "aclTensor*"]
    nd_tensor(c.tensor(0), x, INT8)
    nz_tensor(c.tensor(1), w, INT8, [2, 2, 2, 16, 32])
    nd_tensor(c.tensor(2), scale, FLOAT)
    assert c.null(3)
    nd_tensor(c.tensor(4), pts, FLOAT)
    nd_tensor(c.tensor(5), gl, INT64)
    nd_tensor(c.tensor(6), shared, BF16)
    nd_tensor(c.tensor(7), logit, FLOAT)
    nd_tensor(c.tensor(8), rows, INT64)
    assert [c.value(9, "int64_t"), c.value(10, "float"), c.value(11, "int64_t")] == [0, 0.5, 1]
    assert c.value(14, "int64_t") == 1
    out_bytes(y, 0)
    fake.assert_balanced()

    begin(fake)
    try:
        aclnn().call("npu_grouped_matmul_finalize_routing", fr_args(x, w, gl, scale=scale, offset=torch.rand(2, 1, 48)))
    except BackendError as e:
        assert "WeightNzV2" in str(e)
    else:
        raise AssertionError("offset with only WeightNz must be refused")
    assert fake.counts()["tensor_create"] == 0


@old_cann
def old_missing_symbol_is_backend_error(fake: Fake):
    from ascend_moe.backends import BackendError
    from ascend_moe.formats import set_format
    import ascend_moe._C as C
    begin(fake)
    found, detail = C.probe("aclnnGroupedMatmulWeightNz")
    assert found is False
    assert "aclnnGroupedMatmulWeightNzGetWorkspaceSize" in detail and "undefined symbol" in detail, detail
    x = torch.randn(4, 16, dtype=torch.float16)
    w = torch.randn(2, 16, 16, dtype=torch.float16)
    set_format(w, "FRACTAL_NZ")
    try:
        aclnn().call("npu_grouped_matmul", gm_args([x], [w], group_list=torch.tensor([1, 4]), split_item=3,
                                                   group_type=0))
    except BackendError as e:
        assert "aclnnGroupedMatmulWeightNzGetWorkspaceSize" in str(e), str(e)
    else:
        raise AssertionError("a missing entry point must raise BackendError")
    assert fake.counts()["tensor_create"] == 0
    # asking the dispatcher directly for the missing entry point is an AclnnError without status
    nz_args = ([("L", None)] * 8 + [("T", None)] + [("L", None)] * 3 + [("i", 0)] * 4 + [("I", None), ("i", 0)] +
               [("L", None)] * 3)
    e = expect_aclnn_error(lambda: C.run("aclnnGroupedMatmulWeightNz", nz_args), -1,
                           "aclnnGroupedMatmulWeightNz", "entry point unavailable")
    assert e.status_name == ""
    # argument kinds are checked against the prototype before any object is created
    try:
        C.run("aclnnGroupedMatmulV4", nz_args[:16] + [("I", None), ("L", None), ("L", None)])
    except ValueError as err:
        assert "argument 16 must be of kind 'L'" in str(err), str(err)
    else:
        raise AssertionError("wrong argument kinds must raise ValueError")
    assert fake.counts()["tensor_create"] == 0


@old_cann
def old_quant_ops_fall_back_to_v1(fake: Fake):
    """Without DynamicQuantV2 / DequantSwigluQuantV2: the V1 entry points (op-plugin's DO_COMPATIBILITY);
    a group_index V1 cannot take is refused instead of dropped."""
    import ascend_moe
    from ascend_moe.backends import BackendError
    begin(fake)
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    y, s = ascend_moe.npu_dynamic_quant(x, backend="aclnn")
    c = Call(fake, "aclnnDynamicQuant")
    assert c.kinds() == ["aclTensor*"] * 4
    nd_tensor(c.tensor(0), x, BF16)
    assert c.null(1)
    nd_tensor(c.tensor(2), y, INT8)
    nd_tensor(c.tensor(3), s, FLOAT)
    fake.assert_balanced()
    begin(fake)
    try:
        ascend_moe.npu_dynamic_quant(x, smooth_scales=torch.ones(1, 32, dtype=torch.bfloat16),
                                     group_index=torch.tensor([4], dtype=torch.int32), backend="aclnn")
    except BackendError as e:
        assert "group_index" in str(e)
    else:
        raise AssertionError("group_index must be refused on aclnnDynamicQuant")
    assert fake.counts()["tensor_create"] == 0 and not fake.gws()
    begin(fake)
    xi = torch.randint(-9, 9, (4, 128), dtype=torch.int32)
    y, s = ascend_moe.npu_dequant_swiglu_quant(xi, weight_scale=torch.rand(128), quant_mode=1, backend="aclnn")
    c = Call(fake, "aclnnDequantSwigluQuant")
    assert c.kinds() == ["aclTensor*"] * 7 + ["bool", "char*", "aclTensor*", "aclTensor*"]
    assert c.value(7, "bool") is False and c.value(8, "char*") == "dynamic"
    fake.assert_balanced()


# the routing / combine ops' scenarios register themselves into the tables above
import fakecann_scenarios_routing  # noqa: E402,F401
import fakecann_scenarios_distribute  # noqa: E402,F401
