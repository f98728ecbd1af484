"""Every Python example of the op pages (examples/seeds/, the doc code with its line breaks
restored) runs unchanged on the simulated npu; the three that are invalid on Atlas A2 stop with a
ConstraintError naming the argument (or, where no public host code rejects it, a NotSimulatedError
naming it)."""
import math
import runpy
from pathlib import Path

import pytest
import torch

from ascend_moe import ConstraintError, NotSimulatedError
from ascend_moe.simulation import constraint_error_in

SEEDS = Path(__file__).resolve().parents[2] / "examples" / "seeds"


def run_seed(name: str) -> dict:
    return runpy.run_path(str(SEEDS / f"{name}.py"), run_name="__main__")


def run_invalid_seed(name: str) -> ConstraintError:
    with pytest.raises(Exception) as info:
        run_seed(name)
    found = constraint_error_in(info.value)
    assert found is not None, f"{name} failed with {info.value!r}, not a ConstraintError"
    return found


def fast_gelu(v: torch.Tensor) -> torch.Tensor:
    # x / (1 + exp(-1.702 |x|)) * exp(0.851 (x - |x|)): the FastGelu formula of the CANN docs
    return v / (1 + torch.exp(-1.702 * v.abs())) * torch.exp(0.851 * (v - v.abs()))


def test_ffn_single_op():
    g = run_seed("ffn_single_op")
    out = g["npu_out"]
    assert out.device.type == "npu" and out.shape == (1, 1280) and out.dtype == torch.float16
    x, w1, w2 = (g[n].cpu().double() for n in ("cpu_x", "cpu_weight1", "cpu_weight2"))
    ref = fast_gelu(x @ w1) @ w2
    err = (out.cpu().double() - ref).abs().max().item()
    assert err <= 2e-2 * ref.abs().max().item()


def test_ffn_graph_is_invalid_on_a2_weight2():
    e = run_invalid_seed("ffn_graph")
    assert "'weight2'" in str(e) and "atlas-a2" in str(e)


def _gating_reference(x: torch.Tensor, bias: torch.Tensor, k_group: int, group_count: int):
    """Expert chosen per row (k=1, group_select_mode=1: a group scores its top-2 sum), by plain loops."""
    scores = torch.sigmoid(x.float())
    biased = scores + bias.float()
    per_group = x.shape[1] // group_count
    chosen = []
    for row in biased.tolist():
        groups = []
        for g in range(group_count):
            top2 = sorted(row[g * per_group:(g + 1) * per_group], reverse=True)[:2]
            groups.append((sum(top2), -g))
        keep = {-g for _, g in sorted(groups, reverse=True)[:k_group]}
        best = max((v, -e) for e, v in enumerate(row) if e // per_group in keep)
        chosen.append(-best[1])
    return chosen


@pytest.mark.parametrize("name", ["gating_single_op", "gating_graph"])
def test_gating(name):
    g = run_seed(name)
    y, idx = g["y_npu"], g["expert_idx_npu"]
    assert y.device.type == "npu" and idx.device.type == "npu"
    assert idx.shape == (16, 1) and y.shape == (16, 1)
    expected = _gating_reference(g["x_tensor"].cpu(), g["bias_tensor"].cpu(), 4, 8)
    assert idx.cpu().flatten().tolist() == expected
    # k=1, norm_type=1: the one weight is the sigmoid score normalised by itself, times the scaling factor 1
    assert torch.allclose(y.cpu().float(), torch.ones(16, 1), atol=1e-3)


def _per_group_matmul(x: torch.Tensor, w: torch.Tensor, ends) -> torch.Tensor:
    rows, start = [], 0
    for e, end in enumerate(ends):
        rows.append(x[start:end].double() @ w[e].double())
        start = end
    return torch.cat(rows)


def test_gmm_v1_forward_backward_transposed_weight():
    g = run_seed("gmm_v1")
    result = g["result"]  # the transposed-weight call
    assert result.device.type == "npu" and result.shape == (32, 32)
    ref = _per_group_matmul(g["x"].detach(), g["weight_trans"].detach().transpose(-1, -2), g["group_list"])
    assert torch.allclose(result.detach().cpu().double(), ref, rtol=5e-3, atol=5e-3)
    # the backward of the first call reached the CPU leaves through .npu(): d(sum y)/dx = row sums of W_e
    x_grad, w = g["x"].grad, g["weight"].detach()
    assert x_grad is not None and x_grad.device.type == "cpu"
    ends, start, expected = g["group_list"], 0, []
    for e, end in enumerate(ends):
        expected.append(w[e].double().sum(dim=1).expand(end - start, -1))
        start = end
    assert torch.allclose(x_grad.double(), torch.cat(expected), rtol=5e-3, atol=5e-3)


def test_gmm_v2_group_list_past_x_rows_is_invalid():
    e = run_invalid_seed("gmm_v2")
    assert "'group_list'" in str(e) and "33" in str(e)


def test_swiglu_quant_single_op():
    g = run_seed("swiglu_quant_single_op")
    out, scale = g["output0_npu"], g["output1_npu"]
    assert out.device.type == "npu" and scale.device.type == "npu"
    assert out.dtype == torch.int8 and out.shape == (512, 2048) and scale.shape == (512,)
    # spot-check two rows by the documented data flow: int32 matmul, dequant by weightScale * xScale,
    # SwiGLU of the two halves, then dynamic per-row int8 quantisation (scale = max|h| / 127)
    x, w, ws, xs = g["x"], g["weight"], g["weightScale"], g["xScale"]
    # group_list [128, 128] is cumulative: expert 0 owns rows 0-127, expert 1 none; rows 128+ are never
    # written by the device (NaN under the default undefined-region policy)
    assert torch.isnan(scale.cpu()[128:]).all() and not torch.isnan(scale.cpu()[:128]).any()
    for row, expert in ((0, 0), (127, 0)):
        acc = (x[row].long() @ w[expert].long()).double()
        deq = acc * ws[expert].double() * xs[row].double()
        a, b = deq[:2048], deq[2048:]
        h = a * torch.sigmoid(a) * b
        s = h.abs().max() / 127
        assert math.isclose(scale[row].cpu().item(), s.item(), rel_tol=1e-3)
        q = torch.clamp(torch.round(h / s), -128, 127)
        assert (out[row].cpu().double() - q).abs().max().item() <= 1


def test_swiglu_quant_graph_quant_dtype_is_refused():
    # No public host code of A2/A3 rejects quant_dtype=2, so this is not claimed as a device rejection:
    # the simulator refuses the form it does not model, naming the argument.
    e = run_invalid_seed("swiglu_quant_graph")
    assert isinstance(e, NotSimulatedError) and "'quant_dtype'" in str(e)
