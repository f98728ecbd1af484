"""A vllm-ascend-style bf16 MoE layer written for the NPU (.npu() weights, device="npu" buffers,
torch.npu.current_stream(), an Event between the routing and the expert compute) runs unchanged on
the simulated device and equals a plain-torch reference computed on the CPU."""
import torch
import torch_npu

E, H, I, TOKENS, TOP_K = 8, 64, 32, 24, 2


class NpuMoELayer(torch.nn.Module):
    """Softmax top-k routing, token sort by expert, grouped gate/up matmul, SwiGLU, grouped down
    matmul, weighted un-permute - the unquantised path vllm-ascend takes with torch_npu."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor, router: torch.Tensor):
        super().__init__()
        self.w13 = torch.nn.Parameter(w13.npu(), requires_grad=False)   # [E, H, 2I]
        self.w2 = torch.nn.Parameter(w2.npu(), requires_grad=False)     # [E, I, H]
        self.router = torch.nn.Parameter(router.npu(), requires_grad=False)  # [H, E]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        stream = torch.npu.current_stream()
        logits = hidden.float() @ self.router.float()
        weights, experts = torch.softmax(logits, dim=-1).topk(TOP_K, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        routed = torch.npu.Event()
        routed.record(stream)
        flat = experts.flatten()
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E).to(torch.int64)
        sorted_x = hidden.index_select(0, order // TOP_K)
        stream.wait_event(routed)
        gate_up = torch_npu.npu_grouped_matmul([sorted_x], [self.w13], group_list=counts, split_item=2,
                                               group_type=0, group_list_type=1)[0]
        act = torch.nn.functional.silu(gate_up[:, :I].float()) * gate_up[:, I:].float()
        down = torch_npu.npu_grouped_matmul([act.to(torch.bfloat16)], [self.w2], group_list=counts,
                                            split_item=2, group_type=0, group_list_type=1)[0]
        out = torch.zeros(TOKENS * TOP_K, H, dtype=torch.float32, device="npu")
        out[order] = down.float()
        out = (out.view(TOKENS, TOP_K, H) * weights.unsqueeze(-1)).sum(dim=1)
        torch.npu.synchronize()
        return out.to(torch.bfloat16)


def reference(hidden, w13, w2, router):
    """The same layer by plain loops over tokens and their chosen experts, in float64 on the CPU."""
    out = torch.zeros(TOKENS, H, dtype=torch.float64)
    probs = torch.softmax(hidden.double() @ router.double(), dim=-1)
    for t in range(TOKENS):
        w, e = probs[t].topk(TOP_K)
        w = w / w.sum()
        for k in range(TOP_K):
            gu = hidden[t].double() @ w13[e[k]].double()
            a = gu[:I] * torch.sigmoid(gu[:I]) * gu[I:]
            out[t] += w[k] * (a @ w2[e[k]].double())
    return out


def test_vllm_style_moe_layer_matches_reference():
    torch.manual_seed(3)
    hidden = torch.randn(TOKENS, H, dtype=torch.bfloat16)
    w13 = (torch.randn(E, H, 2 * I) / 8).to(torch.bfloat16)
    w2 = (torch.randn(E, I, H) / 6).to(torch.bfloat16)
    router = torch.randn(H, E, dtype=torch.bfloat16)
    layer = NpuMoELayer(w13, w2, router)
    out = layer(hidden.npu())
    assert out.device.type == "npu" and out.dtype == torch.bfloat16
    ref = reference(hidden, w13, w2, router)
    err = (out.cpu().double() - ref).abs().max().item()
    assert err <= 3e-2 * ref.abs().max().item(), err
