"""MC2 expert parallelism on the simulated npu device: two gloo processes, each with its own simulated NPU
(``ascend_moe.simulate()``, ``torch.npu.set_device(rank)``), run torch_npu code - ``.npu()`` tensors through
``torch_npu.npu_moe_distribute_dispatch_v2`` -> ``torch_npu.npu_grouped_matmul`` -> ``npu_moe_distribute_combine_v2``
- and the same calls on CPU tensors.  Every output stays on the rank's npu and equals the CPU path bit for bit;
the bf16 layer's combine also equals a plain loop written here.

The device's C++ part is built (or loaded from the cache) in this process before the workers start, so they only
load the cached build instead of each compiling it under the file lock.
"""
from __future__ import annotations

import datetime
import traceback
import warnings

import ml_dtypes
import numpy as np
import pytest

from ascend_moe.ep_layer import save_rank_result, spawn_ranks

BF16 = np.dtype(ml_dtypes.bfloat16)
WORLD, EXPERTS, K, H, TOKENS = 2, 6, 3, 32, [5, 4]
RUN_TIMEOUT = 240  # seconds for the 2-process launch (importing torch and the device takes most of it)


def make_inputs(rank):
    """Rank ``rank``'s tokens (small integers: every bf16 product below is exact), top-k ids and weights."""
    rng = np.random.default_rng(41 + rank)
    bs = TOKENS[rank]
    x = rng.integers(-8, 9, size=(bs, H)).astype(np.float32)
    ids = np.stack([rng.permutation(EXPERTS)[:K] for _ in range(bs)]).astype(np.int32)
    w = rng.uniform(0.05, 1.0, size=(bs, K)).astype(np.float32)
    return x, ids, w


def smooth_scales():
    """The int8 dispatch's smooth scales, one row per expert."""
    return np.random.default_rng(7).uniform(0.5, 2.0, size=(EXPERTS, H)).astype(np.float32)


def expert_factor(e):
    """Expert ``e`` multiplies its rows by this (its weight is ``factor * I``): a row lands at the right expert
    only if the layer routes it there."""
    return 1 + e % 3


# ------------------------------------------------------------------ the worker ---------------------

def _layer(torch, torch_npu, name, rank, device, quant):
    """dispatch_v2 -> grouped matmul of the local experts -> combine_v2, all tensors on ``device``."""
    x, ids, w = make_inputs(rank)
    local = EXPERTS // WORLD
    xt = torch.from_numpy(x).to(torch.bfloat16).to(device)
    idt, wt = torch.from_numpy(ids).to(device), torch.from_numpy(w).to(device)
    kw = dict(expert_scales=wt, global_bs=max(TOKENS) * WORLD)
    if quant:
        kw.update(quant_mode=2, scales=torch.from_numpy(smooth_scales()).to(device))
    outs = torch_npu.npu_moe_distribute_dispatch_v2(xt, idt, name, WORLD, rank, EXPERTS, **kw)
    expand_x, dyn, assist, counts, ep_recv, tp_recv, expand_scales = outs
    rows = int(counts.sum().item())
    if quant:   # dequantised rows, then each expert's factor (exact in fp32, one bf16 rounding)
        xs = expand_x[:rows].float() * dyn[:rows].unsqueeze(1)
        factors = torch.repeat_interleave(
            torch.tensor([float(expert_factor(rank * local + j)) for j in range(local)], device=device),
            counts.to(torch.int64))
        y_rows = (xs * factors.unsqueeze(1)).to(torch.bfloat16)
    else:
        weights = torch.stack([torch.eye(H) * expert_factor(rank * local + j) for j in range(local)])
        y_rows = torch_npu.npu_grouped_matmul([expand_x[:rows]], [weights.to(torch.bfloat16).to(device)],
                                              group_list=counts, split_item=2, group_type=0, group_list_type=1)[0]
    y = torch.zeros((expand_x.shape[0], H), dtype=torch.bfloat16, device=device)
    y[:rows] = y_rows
    out = torch_npu.npu_moe_distribute_combine_v2(y, idt, assist, ep_recv, wt, name, WORLD, rank, EXPERTS,
                                                  tp_send_counts=tp_recv, expand_scales=expand_scales,
                                                  global_bs=max(TOKENS) * WORLD)
    tensors = dict(expand_x=expand_x, dynamic_scales=dyn, assist=assist, expert_token_nums=counts,
                   ep_recv_counts=ep_recv, expand_scales=expand_scales, out=out)
    return {k: (str(t.device), _np(torch, t)) for k, t in tensors.items()}


def _np(torch, t):
    t = t.cpu()
    return t.view(torch.int16).numpy().view(BF16).copy() if t.dtype == torch.bfloat16 else t.numpy().copy()


def _worker(rank, world, port, out_dir):
    results = {}
    try:
        import ascend_moe
        ascend_moe.simulate(product="atlas-a2")   # loads the device the parent built
        import torch
        import torch.distributed as dist
        import torch_npu
        from ascend_moe import distributed as ep
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        ep.set_timeout(30)
        torch.npu.set_device(rank)
        name = ep.get_hccl_comm_name(dist.group.WORLD, rank)
        for quant in (False, True):
            results[quant] = dict(npu=_layer(torch, torch_npu, name, rank, torch.device("npu", rank), quant),
                                  cpu=_layer(torch, torch_npu, name, rank, torch.device("cpu"), quant))
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - reported by the test
        results["crash"] = traceback.format_exc()
    save_rank_result(out_dir, rank, results)


def _failed_to_connect(results):
    """Whether a rank failed while joining the process group (the machine, not the code under test: the
    chosen port taken by another process between choosing and binding it, a connect timeout under load)."""
    return any("crash" in res and "init_process_group" in res["crash"] and len(res) == 1 for res in results)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    from ascend_moe.device._build import load_extension
    load_extension()   # built (or loaded from the cache) here, before any worker starts
    for attempt in range(2):
        results = spawn_ranks(_worker, WORLD, str(tmp_path_factory.mktemp(f"ep_npu{attempt}")), RUN_TIMEOUT)
        if not _failed_to_connect(results):
            break
        if attempt == 0:
            warnings.warn("retrying the EP launch after a rank failed to join the process group:\n"
                          + next(res["crash"] for res in results if "crash" in res))
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r} crashed:\n{res['crash']}"
    return results


def _bits(a):
    return a.view(np.int16) if a.dtype == BF16 else a


@pytest.mark.parametrize("quant", [False, True], ids=["bf16", "int8_dispatch"])
def test_npu_tensors_equal_the_cpu_path_bit_for_bit(ranks, quant):
    for r, res in enumerate(ranks):
        npu, cpu = res[quant]["npu"], res[quant]["cpu"]
        for key, (device, got) in npu.items():
            assert device == f"npu:{r}", (r, key, device)
            assert cpu[key][0] == "cpu"
            want = cpu[key][1]
            assert got.dtype == want.dtype and got.shape == want.shape, (r, key)
            # rows past the received ones are undefined on the device (poisoned NaN / sentinels in both paths)
            np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=f"rank {r} {key}")
        assert npu["expand_x"][1].dtype == (np.int8 if quant else BF16)


def test_npu_combine_equals_a_plain_loop(ranks):
    """out[t] = bf16(sum over k, in k order, of fp32(row * factor(expert) * weight)): the bf16 layer's rows
    were routed to their experts and came back to their tokens."""
    for r, res in enumerate(ranks):
        x, ids, w = make_inputs(r)
        want = np.zeros((TOKENS[r], H), BF16)
        for t in range(TOKENS[r]):
            acc = np.zeros(H, np.float32)
            for kk in range(K):
                y = (x[t] * np.float32(expert_factor(int(ids[t, kk])))).astype(BF16).astype(np.float32)
                acc = (acc + (y * np.float32(w[t, kk])).astype(np.float32)).astype(np.float32)
            want[t] = acc.astype(BF16)
        np.testing.assert_array_equal(_bits(res[False]["npu"]["out"][1]), _bits(want), err_msg=f"rank {r}")
        # every (token, k) pair of both ranks was received by the rank holding its expert
        counts = res[False]["npu"]["expert_token_nums"][1]
        local = EXPERTS // WORLD
        want_counts = [sum(int((make_inputs(src)[1] == r * local + j).sum()) for src in range(WORLD))
                       for j in range(local)]
        assert counts.tolist() == want_counts
