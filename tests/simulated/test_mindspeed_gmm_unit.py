"""MindSpeed's own grouped-matmul unit test (tests_extend/unit_tests/ops/cann/test_npu_gmm.py), said
again in this project's words, with its device skip marks removed: it imports torch_npu, torchair
and mindspeed.ops.gmm, reads the device name through torch_npu.npu, moves tensors with .npu(),
compiles a model with the TorchAir backend, and compares npu_gmm / npu_gmm_v2 against a per-group
matmul of the same npu tensors."""
import os

import pytest
import torch
import torch_npu
import torchair as tng
from torchair.configs.compiler_config import CompilerConfig
from mindspeed.ops.gmm import npu_gmm, npu_gmm_v2

os.environ["ENABLE_ACLNN"] = "true"
npu_backend = tng.get_npu_backend(compiler_config=CompilerConfig())
SOC_PREFIX = torch_npu.npu.get_device_name(0)[:10]

INT_CUMSUM, TENSOR_CUMSUM, TENSOR_COUNTS = 0, 1, 2


class GroupedModel(torch.nn.Module):
    def forward(self, x, weight, group_list, group_type, use_v2):
        fn = npu_gmm_v2 if use_v2 else npu_gmm
        return fn(x, weight, bias=None, group_list=group_list, group_type=group_type)


def per_group_reference(x, weight, sizes, group_type):
    """Each group's matmul, concatenated: M split (group_type 0) or K split (group_type 2)."""
    if group_type == 0:
        xs, ws = x.split(sizes, dim=0), weight
    else:
        xs, ws = x.split(sizes, dim=-1), weight.split(sizes, dim=0)
    return torch.cat([xs[e] @ ws[e] for e in range(len(sizes))], dim=0)


def test_device_is_an_a2_soc():
    assert SOC_PREFIX == "Ascend910B"


@pytest.mark.parametrize("mode", [INT_CUMSUM, TENSOR_CUMSUM, TENSOR_COUNTS])
@pytest.mark.parametrize("graph", [True, False])
def test_gmm_m_split(mode, graph):
    weight = torch.randn(8, 64, 32, dtype=torch.float16).npu()
    if mode == TENSOR_COUNTS:
        sizes = [1, 3, 5, 7, 9, 6, 7, 4]
        x = torch.randn(42, 64, dtype=torch.float16).npu()
        group_list, use_v2 = torch.tensor(sizes).to(torch.int64).npu(), True
    else:
        sizes = [1, 2, 3, 4, 5, 6, 7, 4]
        x = torch.randn(32, 64, dtype=torch.float16).npu()
        ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
        group_list = ends if mode == INT_CUMSUM else torch.tensor(ends).to(torch.int64).npu()
        use_v2 = False
    expected = per_group_reference(x, weight, sizes, 0)
    if graph and mode != INT_CUMSUM:
        model = torch.compile(GroupedModel().npu(), backend=npu_backend, dynamic=True)
        y = model(x, weight, group_list, 0, use_v2)
    else:
        y = GroupedModel()(x, weight, group_list, 0, use_v2)
    assert y.device.type == "npu"
    assert torch.allclose(y, expected, rtol=0.005, atol=0.005)


@pytest.mark.parametrize("mode", [INT_CUMSUM, TENSOR_CUMSUM, TENSOR_COUNTS])
def test_gmm_k_split(mode):
    if mode == TENSOR_COUNTS:
        sizes = [9, 0, 0, 7, 9, 6, 7, 4]
        weight = torch.randn(42, 64, dtype=torch.float16).npu()
        x = torch.randn(42, 48, dtype=torch.float16).npu().transpose(-1, -2)
        group_list, use_v2 = torch.tensor(sizes).to(torch.int64).npu(), True
    else:
        sizes = [1, 2, 3, 4, 5, 6, 7, 4]
        weight = torch.randn(32, 64, dtype=torch.float16).npu()
        x = torch.randn(32, 48, dtype=torch.float16).npu().transpose(-1, -2)
        ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
        group_list = ends if mode == INT_CUMSUM else torch.tensor(ends).to(torch.int64).npu()
        use_v2 = False
    expected = per_group_reference(x, weight, sizes, 2)
    y = GroupedModel()(x, weight, group_list, 2, use_v2)
    assert y.device.type == "npu"
    assert torch.allclose(y.reshape(-1, 64), expected, rtol=0.005, atol=0.005)
