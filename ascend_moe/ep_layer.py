"""One expert-parallel MoE layer on N processes (simulated NPUs over torch.distributed / gloo).

Per rank: gating (``npu_moe_gating_top_k``) on its own tokens -> ``npu_moe_distribute_dispatch_v2``
-> grouped matmul of its local experts (up, SwiGLU, down) -> the shared expert on its own tokens
-> ``npu_moe_distribute_combine_v2`` (shared output as ``shared_expert_x``).  Reports each rank's
time per stage and the all-to-all volume it sent and received.

Quantised (``quant="w8a8"`` / ``"w4a8"``), as vllm-ascend's MC2 path runs it: the dispatch quantises
(``quant_mode=2``: int8 rows and their dynamic per-token scales come out of the exchange), then
``npu_grouped_matmul_swiglu_quant`` (v1, cumsum group list) and the quantised down-projection
``npu_grouped_matmul`` (per-token scale, bf16 output) - the expert path of the single-process
``check --run`` (:func:`ascend_moe.model_check.run_layer`) - then the combine of the bf16 outputs.

Run it on one machine (spawns N processes; ``python -m ascend_moe check --model deepseek-v3 --ep 4 --run``
does the same after the checker's report)::

    python -m ascend_moe.ep_layer --model deepseek-v3 --ep 4 --tokens 4

or across machines under torchrun (one process per simulated NPU; gloo over TCP)::

    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --master-addr HOST --master-port 29500 \\
        -m ascend_moe.ep_layer --model deepseek-v3 --tokens 4

Weights are random and, as in ``check --run``, all routed experts share one random weight
(stride-0 view; each grouped call is checked with the weight described as a contiguous tensor).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["run_rank", "launch_local", "run_torchrun", "under_torchrun", "format_ranks", "main"]


def rank_working_set(rep: Any) -> float:
    """Bytes of fp32 working memory one rank of ``rep``'s EP layer may need: ``check --run``'s working set
    with every rank's tokens routed here, i.e. ``global_bs * min(local experts, k)`` received rows."""
    from .model_check import working_set_bytes
    d = rep.dims
    return working_set_bytes(rep, expanded_rows=d.tokens * d.ep * min(d.local_experts, d.top_k))


def check_memory(rep: Any, processes_here: int, budget: Optional[float] = None) -> None:
    """MemoryError, before anything is allocated or started, when ``processes_here`` ranks of the layer
    could need more than ``budget`` bytes together (a kernel OOM kill would otherwise end the run)."""
    from .model_check import MEMORY_BUDGET
    budget = MEMORY_BUDGET if budget is None else budget
    need = rank_working_set(rep) * processes_here
    if need > budget:
        raise MemoryError(
            f"--run with --ep {rep.dims.ep} at {rep.dims.tokens} tokens per rank may need about {need / 1e9:.1f} GB of "
            f"working memory for the {processes_here} process(es) on this machine (each rank can receive "
            f"{rep.dims.tokens * rep.dims.ep} tokens' rows), more than the budget of {budget / 1e9:.1f} GB; use "
            "fewer --tokens or a smaller --ep here (or spread the ranks over machines with torchrun)")


def run_rank(model: Any, tokens: int, product: Optional[str] = None, cann: Optional[str] = None,
             seed: int = 0, host_renorm: bool = False, group: Any = None, quant: str = "none",
             keep_tensors: bool = False) -> Dict[str, Any]:
    """Run the layer on this rank of ``group`` (default: the world group); returns its timings and volume.

    ``model``: a preset name, a config path, or a :class:`ascend_moe.model_check.MoEConfig`; ``quant``:
    ``"none"``, ``"w8a8"`` or ``"w4a8"`` (the expert path of ``check --quant``).  ``keep_tensors`` adds
    ``"tensors"``: this rank's input ``x``, routing (``expert_idx``, ``routing_weights``), the shared
    expert's output, the layer ``output``, and the expert weights (bf16 ``w13`` / ``w2``, or the quantised
    ``q13, s13, q2, s2``), so a caller can recompute the layer."""
    import ml_dtypes
    import torch
    import torch.distributed as dist

    from . import distributed as ep
    from . import model_check as mc
    from . import sim
    from .products import target as _target
    from .rules import ConstraintWarning, enforce
    from .rules import TensorSpec
    from .sim import gmm as _gmm
    from .sim import gmm_quant as _gq
    from .sim import swiglu_quant as _sq

    group = group if group is not None else dist.group.WORLD
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    rep = mc.check_model(model, product, cann, quant=quant, tokens=tokens, ep=world, host_renorm=host_renorm)
    if not rep.passed:
        raise RuntimeError("the layer breaks product rules; run `python -m ascend_moe check` for details:\n"
                           + mc.format_report(rep))
    check_memory(rep, processes_here=1)  # every rank computes the same verdict, so none waits for another
    cfg, d = rep.config, rep.dims
    T, E, El, K, H, inter = d.tokens, d.experts, d.local_experts, d.top_k, d.hidden, d.inter
    S = cfg.shared_intermediate_size
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(seed + 1000 * rank)
    shared_rng = np.random.default_rng(seed)          # weights: identical on every rank
    name = ep.get_hccl_comm_name(group, dist.get_rank())
    timings: Dict[str, float] = {}
    volume: Dict[str, Dict[str, int]] = {}

    def randn(r, *shape, scale=1.0):
        return ((r.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(scale * 12 ** 0.5))

    def bf(a):
        return np.asarray(a, np.float32).astype(bf16)

    def tt(a):
        a = np.ascontiguousarray(a)
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == bf16 else torch.from_numpy(a)

    def silu_mul(h, n):
        hf = h.astype(np.float32)
        g = hf[:, :n]
        return (g / (1 + np.exp(-g)) * hf[:, n:]).astype(bf16)

    class stage:
        def __init__(self, label):
            self.label = label

        def __enter__(self):
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            timings[self.label] = time.perf_counter() - self.t0
            return False

    with stage("setup"):
        # one-time imports, so that the stage times below are the ops': registering the torch ops, and
        # torch._dynamo, which a torch.library op imports on its first call
        from . import ops as _ops  # noqa: F401
        import torch._dynamo  # noqa: F401
        w_gate = randn(shared_rng, H, E, scale=H ** -0.5)
        bias = bf(randn(shared_rng, E, scale=0.1)) if cfg.has_bias else None
        w13_one = randn(shared_rng, H, 2 * inter, scale=H ** -0.5)      # one expert's fp32 master copy
        w2_one = randn(shared_rng, inter, H, scale=inter ** -0.5)
        w13 = np.broadcast_to(bf(w13_one), (El, H, 2 * inter))
        w2 = np.broadcast_to(bf(w2_one), (El, inter, H))
        if S:
            ws13 = bf(randn(shared_rng, H, 2 * S, scale=H ** -0.5))
            ws2 = bf(randn(shared_rng, S, H, scale=S ** -0.5))
        x = bf(randn(rng, T, H))
    gating = next(st for st in rep.stages if st.op == "npu_moe_gating_top_k")
    with _target(product=rep.target.product, cann=str(rep.target.cann)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConstraintWarning)
        with stage("gating"):
            logits = (x.astype(np.float32) @ w_gate).astype(bf16)
            y, idx, _ = sim.npu_moe_gating_top_k(logits, K, bias=bias,
                                                 **{k: v for k, v in gating.kwargs.items() if k != "bias"})
            weights = y.astype(np.float32)
            if any(st.name == "renormalise" for st in rep.stages):   # --host-renorm
                weights = weights / weights.sum(-1, keepdims=True)
        with stage("dispatch"):
            outs = ep.npu_moe_distribute_dispatch_v2(
                tt(x), torch.from_numpy(idx.astype(np.int32)), name, world, rank, E,
                expert_scales=torch.from_numpy(weights.astype(np.float32)), global_bs=T * world,
                quant_mode=2 if quant != "none" else 0)
        volume["dispatch"] = ep.last_exchange_stats()
        expand_x, dynamic_scales, assist, token_nums, ep_recv, tp_recv, expand_scales = outs
        counts = token_nums.numpy().astype(np.int64)
        rows = int(counts.sum())
        if quant == "none":
            xs = expand_x[:rows].view(torch.int16).numpy().view(bf16)
            gmm_kw = dict(group_list=counts, split_item=2, group_type=0, group_list_type=1)
            spec13 = TensorSpec(w13.shape, "bfloat16")
            spec2 = TensorSpec(w2.shape, "bfloat16")
            with stage("up-projection"):
                enforce("npu_grouped_matmul", [xs], [spec13], **gmm_kw)
                h = _gmm.grouped_matmul_compute([xs], [w13], None, counts, 2, 0, 1)[0]
            with stage("activation"):
                a = silu_mul(h, inter)
            with stage("down-projection"):
                enforce("npu_grouped_matmul", [a], [spec2], **gmm_kw)
                o = _gmm.grouped_matmul_compute([a], [w2], None, counts, 2, 0, 1)[0]
        else:
            # the dispatch quantised the rows (quant_mode=2): int8 rows and their per-token scales
            xq = expand_x[:rows].numpy()
            x_scale = dynamic_scales[:rows].numpy()
            started = time.perf_counter()
            groups, g_counts = mc.quant_groups(quant, counts, H, inter)
            qw = mc.quant_expert_weights(quant, w13_one, w2_one, groups)
            # quantising the random weights is setup work (w4a8 needs this step's counts first)
            timings["setup"] += time.perf_counter() - started
            cum = np.cumsum(g_counts)
            with stage("up + swiglu + quant"), mc.machine_gemm_kernels():
                enforce("npu_grouped_matmul_swiglu_quant", xq, qw.w13_spec, cum, qw.w13_scale, x_scale,
                        **qw.sq_extra)
                a, a_scale = _sq.compute(xq, qw.w13, qw.w13_scale, x_scale, cum, group_list_type=0,
                                         assist=qw.sq_extra.get("bias"), kernel="v1")
            with stage("down-projection"), mc.machine_gemm_kernels():
                gm_kw = dict(scale=[qw.w2_scale], bias=None if qw.fr_bias is None else [qw.fr_bias],
                             per_token_scale=[a_scale], group_list=g_counts, split_item=2, group_type=0,
                             group_list_type=1, output_dtype=mc.BF16_CODE)
                enforce("npu_grouped_matmul", [a], [qw.w2_spec], **gm_kw)
                o = _gq.quant_grouped_matmul(a, qw.w2, g_counts, group_list_type=1, scale=qw.w2_scale,
                                             per_token_scale=a_scale, bias=qw.fr_bias, output_dtype="bfloat16")
        shared_x = None
        if S:
            with stage("shared expert"):
                hs = (x.astype(np.float32) @ ws13.astype(np.float32)).astype(bf16)
                shared_x = tt((silu_mul(hs, S).astype(np.float32) @ ws2.astype(np.float32)).astype(bf16))
        y_full = np.zeros((expand_x.shape[0], H), bf16)
        y_full[:rows] = o
        with stage("combine"):
            out = ep.npu_moe_distribute_combine_v2(
                tt(y_full), torch.from_numpy(idx.astype(np.int32)), assist, ep_recv,
                torch.from_numpy(weights.astype(np.float32)), name, world, rank, E, tp_send_counts=tp_recv,
                expand_scales=expand_scales, shared_expert_x=shared_x, global_bs=T * world)
        volume["combine"] = ep.last_exchange_stats()
    result = out.view(torch.int16).numpy().view(bf16)
    res = dict(rank=rank, world=world, model=cfg.name, product=rep.target.product, cann=str(rep.target.cann),
               quant=quant, tokens=T, local_experts=El, received_rows=rows, timings=timings, volume=volume,
               finite=bool(np.isfinite(result.astype(np.float32)).all()))
    if keep_tensors:
        tensors = dict(x=x, expert_idx=idx, routing_weights=weights, output=result.copy(),
                       shared_out=None if shared_x is None else shared_x.view(torch.int16).numpy().view(bf16))
        if quant == "none":
            tensors.update(w13=w13[0], w2=w2[0])
        else:
            tensors.update(q13=qw.q13, s13=qw.s13, q2=qw.q2, s2=qw.s2)
        res["tensors"] = tensors
    return res


def under_torchrun() -> bool:
    """True in a process torchrun (or any launcher setting RANK / WORLD_SIZE) started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_torchrun(model: Any, tokens: int, product: Optional[str] = None, cann: Optional[str] = None,
                 seed: int = 0, host_renorm: bool = False, quant: str = "none") -> Optional[List[Dict[str, Any]]]:
    """This process's rank of a torchrun launch (gloo over TCP, the launcher's rendezvous): runs the
    layer, returns every rank's result on rank 0 and None on the others."""
    import torch.distributed as dist
    from . import distributed as ep
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    try:
        res = run_rank(model, tokens, product, cann, seed, host_renorm, quant=quant)
        # the exchange's own object gather: it returns only after gloo released its tensors (a release
        # left to gloo's worker thread during interpreter exit aborts the process)
        gathered = ep._all_gather_object(res, dist.group.WORLD, "result gather", "ep_layer")
        return gathered if dist.get_rank() == 0 else None
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A free local TCP port (for a gloo rendezvous on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_rank_result(out_dir: str, rank: int, result: Any) -> None:
    """What a process started by :func:`spawn_ranks` reports to its parent."""
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def spawn_ranks(worker: Callable[..., None], world: int, out_dir: str, timeout: float,
                args: Tuple[Any, ...] = ()) -> List[Any]:
    """Run ``worker(rank, world, port, out_dir, *args)`` in ``world`` spawned processes (``port``: a free local
    port for the gloo rendezvous); each reports with :func:`save_rank_result`.  Returns the results in rank
    order.  Processes still running after ``timeout`` seconds are killed (TimeoutError); one that exits
    abnormally ends the launch with torch.multiprocessing's ProcessExitedException."""
    import torch.multiprocessing as mp
    ctx = mp.start_processes(worker, args=(world, free_port(), out_dir, *args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"the {world} EP processes did not finish within {timeout:.0f} s")
    results = []
    for r in range(world):
        with open(os.path.join(out_dir, f"rank{r}.pkl"), "rb") as f:
            results.append(pickle.load(f))
    return results


def _spawned(rank: int, world: int, port: int, out_dir: str, kwargs: Dict[str, Any]) -> None:
    import torch.distributed as dist
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
        res = run_rank(**kwargs)
        dist.destroy_process_group()
    except MemoryError as e:  # the layer's own refusal: reported as such by the parent
        res = dict(rank=rank, error=traceback.format_exc(), memory_error=str(e))
    except Exception:  # noqa: BLE001 - reported by the parent
        res = dict(rank=rank, error=traceback.format_exc())
    save_rank_result(out_dir, rank, res)


def launch_local(model: str, ep: int, tokens: int = 4, product: Optional[str] = None, cann: Optional[str] = None,
                 seed: int = 0, host_renorm: bool = False, timeout: float = 600.0,
                 quant: str = "none") -> List[Dict[str, Any]]:
    """Start ``ep`` processes on this machine (gloo) and run the layer; per-rank results."""
    if ep < 2:
        raise ValueError(f"--ep must be at least 2 to run expert parallelism, got {ep}")
    from . import model_check as mc
    rep = mc.check_model(model, product, cann, quant=quant, tokens=tokens, ep=ep, host_renorm=host_renorm)
    check_memory(rep, processes_here=ep)  # all ranks run here: refuse before starting any of them
    kwargs = dict(model=model, tokens=tokens, product=product, cann=cann, seed=seed, host_renorm=host_renorm,
                  quant=quant)
    with tempfile.TemporaryDirectory() as out_dir:
        results = spawn_ranks(_spawned, ep, out_dir, timeout, args=(kwargs,))
    errors = [r for r in results if "error" in r]
    if errors and all("memory_error" in e for e in errors):
        raise MemoryError(errors[0]["memory_error"])
    if errors:
        raise RuntimeError("EP layer failed:\n" + "\n".join(f"rank {e['rank']}:\n{e['error']}" for e in errors))
    return results


def format_ranks(results: List[Dict[str, Any]]) -> str:
    """A table: per rank, time per stage and the all-to-all volume sent / received."""
    first = results[0]
    stages = list(first["timings"])
    lines = [f"EP layer  {first['model']} on {first['world']} simulated {first['product']} NPUs (CANN {first['cann']}), "
             f"{first['tokens']} tokens per rank, {first['local_experts']} local experts per rank, "
             f"quant {first.get('quant', 'none')}"]
    width = {s: max(len(s), 10) for s in stages}  # whole stage names: "down-projection", "shared expert"
    head = f"{'rank':>4}  " + "  ".join(f"{s:>{width[s] + 2}}" for s in stages) + f"  {'rows in':>7}  " \
        f"{'dispatch out/in KiB':>19}  {'combine out/in KiB':>18}"
    lines += [head, "-" * len(head)]
    for r in results:
        dv, cv = r["volume"]["dispatch"], r["volume"]["combine"]
        lines.append(f"{r['rank']:>4}  " + "  ".join(f"{r['timings'][s] * 1e3:>{width[s]}.1f}ms" for s in stages)
                     + f"  {r['received_rows']:>7}  {dv['sent_bytes'] / 1024:>9.1f}/{dv['recv_bytes'] / 1024:<9.1f}"
                     + f"  {cv['sent_bytes'] / 1024:>8.1f}/{cv['recv_bytes'] / 1024:<9.1f}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ascend_moe.ep_layer", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deepseek-v3")
    p.add_argument("--ep", type=int, default=None, help="processes to start here (omit under torchrun)")
    p.add_argument("--tokens", type=int, default=4, help="tokens per rank")
    p.add_argument("--product", default=None)
    p.add_argument("--cann", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host-renorm", action="store_true", help="renormalise top-k weights on the host "
                   "(as check --host-renorm)")
    p.add_argument("--quant", choices=("none", "w8a8", "w4a8"), default="none",
                   help="expert path (as check --quant); quantised: the dispatch quantises (quant_mode=2)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    kwargs = dict(model=args.model, tokens=args.tokens, product=args.product, cann=args.cann, seed=args.seed,
                  host_renorm=args.host_renorm, quant=args.quant)
    if under_torchrun() and args.ep is None:
        gathered = run_torchrun(**kwargs)
        if gathered is not None:
            print(json.dumps(gathered, indent=2) if args.json else format_ranks(gathered))
        return 0
    results = launch_local(ep=args.ep or 2, **kwargs)
    print(json.dumps(results, indent=2) if args.json else format_ranks(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
