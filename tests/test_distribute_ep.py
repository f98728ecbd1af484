"""Expert parallelism on N gloo processes: npu_moe_distribute_dispatch(_v2) -> experts ->
npu_moe_distribute_combine(_v2), compared with single-process references written here as plain loops.

Each world size is launched once (torch.multiprocessing spawn); every rank runs all scenarios and
saves its outputs, then the tests compare them.  Expert weights are small integers and inputs are
small integers in bfloat16, so every expert output is exact; the combine weights are random fp32,
so the combine order and rounding are what is tested.
"""
from __future__ import annotations

import datetime
import time
import traceback
import warnings

import ml_dtypes
import numpy as np
import pytest

from ascend_moe.ep_layer import save_rank_result, spawn_ranks

BF16 = np.dtype(ml_dtypes.bfloat16)
RUN_TIMEOUT = 120  # seconds for a whole world-size launch (normally a few seconds)


# ------------------------------------------------------------------ scenarios and inputs ----------

def scenario(name, world, experts, k, h=32, bs=None, shared_ranks=0, shared_num=1, quant=0, mask=None,
             version="v2", token_nums_type=1, smooth=False, shared_x=False, product="atlas-a2", global_bs=None):
    bs = bs or [6] * world
    return dict(name=name, W=world, E=experts, K=k, H=h, BS=bs, S=shared_ranks, shared_num=shared_num,
                quant=quant, mask=mask, version=version, type=token_nums_type, smooth=smooth, shared_x=shared_x,
                product=product, global_bs=(max(bs) * world if global_bs is None else global_bs))


SCENARIOS = {
    2: [
        scenario("plain_v2", 2, 8, 3, bs=[5, 5]),
        scenario("v1_cumsum", 2, 4, 2, bs=[4, 4], version="v1", token_nums_type=0),
        scenario("quant_smooth_unequal_bs", 2, 6, 2, bs=[3, 6], quant=2, smooth=True),
        scenario("mask_2d", 2, 8, 4, bs=[5, 4], mask="2d"),
        scenario("quant_no_smooth_v1", 2, 4, 2, bs=[4, 4], quant=2, version="v1"),
        # v1 combine accepts shared_expert_x and ignores it, as the device does (op-plugin does not pass it)
        scenario("v1_shared_x_ignored", 2, 4, 2, bs=[3, 5], version="v1", shared_x=True),
    ],
    4: [
        scenario("shared2x1_mask1d", 4, 4, 2, bs=[5, 5, 5, 5], shared_ranks=2, shared_num=2, mask="1d",
                 shared_x=True, product="atlas-a3"),
        scenario("mask_2d_cumsum", 4, 8, 3, bs=[4, 6, 5, 3], mask="2d", token_nums_type=0),
        scenario("shared1x2_quant", 4, 6, 2, bs=[4, 4, 4, 4], shared_ranks=2, shared_num=1, quant=2, smooth=True,
                 product="atlas-a3"),
    ],
}


# a DeepSeek-shaped MoE block small enough to run in a test (grouped sigmoid gating with bias, a shared expert)
SMALL_MODEL = {"model_type": "deepseek_v3", "hidden_size": 64, "moe_intermediate_size": 32, "n_routed_experts": 16,
               "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
               "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
               "routed_scaling_factor": 2.5}

SUBGROUP_SCENARIOS = [scenario("subgroup_v2", 2, 6, 2, bs=[3, 4])]


def make_inputs(sc, rank):
    """Deterministic inputs of one rank (the same on the worker and in the reference)."""
    rng = np.random.default_rng(1000 * sc["W"] + 7 * rank + sum(map(ord, sc["name"])))
    bs, k, h, e = sc["BS"][rank], sc["K"], sc["H"], sc["E"]
    x = rng.integers(-4, 5, size=(bs, h)).astype(np.float32)
    if sc["quant"]:
        x = x + rng.integers(-64, 64, size=(bs, h)).astype(np.float32) / 128  # non-trivial quantisation
        # a row whose scaled values fall on .5 ties (max |x| = 127 -> scale 1): half-to-even rounding
        x[0, :8] = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]
    x = x.astype(BF16)
    ids = np.stack([rng.permutation(e)[:k] for _ in range(bs)]).astype(np.int32)
    w = rng.uniform(0.05, 1.0, size=(bs, k)).astype(np.float32)
    mask = None
    if sc["mask"] == "1d":
        n = max(1, bs - (rank % 3))
        mask = np.arange(bs) < n
    elif sc["mask"] == "2d":
        mask = rng.random((bs, k)) < 0.7
        mask[0] = False  # a fully inactive token
    shared_x = rng.integers(-3, 4, size=(bs, h)).astype(BF16) if sc["shared_x"] else None
    return dict(x=x, ids=ids, w=w, mask=mask, shared_x=shared_x)


def model_weights(sc):
    rng = np.random.default_rng(99 + sc["E"])
    n_shared = sc["shared_num"] if sc["S"] else 0
    routed = rng.integers(-2, 3, size=(sc["E"], sc["H"], sc["H"])).astype(np.float32)
    shared = rng.integers(-2, 3, size=(max(n_shared, 1), sc["H"], sc["H"])).astype(np.float32)
    smooth = rng.uniform(0.5, 2.0, size=(n_shared + sc["E"], sc["H"])).astype(np.float32) if sc["smooth"] else None
    return routed, shared, smooth


def expert_fn(xf, weight):
    """[n, H] fp32 -> [n, H] bf16; explicit accumulation order (row-independent, exact-order)."""
    acc = np.zeros((xf.shape[0], weight.shape[1]), np.float32)
    for i in range(weight.shape[0]):
        acc = acc + xf[:, i:i + 1] * weight[i][None, :]
    return acc.astype(BF16)


# ------------------------------------------------------------------ the worker ---------------------

def _run_scenarios(group, name, rank, scenarios):
    """Run dispatch -> experts -> combine of each scenario on this rank; return its outputs."""
    import torch
    from ascend_moe import distributed as ep
    from ascend_moe import products

    def bf16(a):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)

    def npv(z):
        return z.view(torch.int16).numpy().view(BF16).copy() if z.dtype == torch.bfloat16 else z.numpy().copy()

    t = torch.from_numpy
    world = torch.distributed.get_world_size(group)
    results = {}
    for sc in scenarios:
        products.set_target(sc["product"])
        inp = make_inputs(sc, rank)
        routed, shared, smooth = model_weights(sc)
        v1 = sc["version"] == "v1"
        dispatch = ep.npu_moe_distribute_dispatch if v1 else ep.npu_moe_distribute_dispatch_v2
        combine = ep.npu_moe_distribute_combine if v1 else ep.npu_moe_distribute_combine_v2
        kw = dict(scales=None if smooth is None else t(smooth), expert_scales=t(inp["w"]),
                  shared_expert_num=sc["shared_num"], shared_expert_rank_num=sc["S"], quant_mode=sc["quant"],
                  global_bs=sc["global_bs"], expert_token_nums_type=sc["type"])
        if inp["mask"] is not None:
            kw["x_active_mask"] = t(inp["mask"])
        outs = dispatch(bf16(inp["x"]), t(inp["ids"]), name, world, rank, sc["E"], **kw)
        expand_x, dyn, assist, tok_nums, ep_recv, tp_recv, exp_scales = outs
        # the experts: rows of local expert j are contiguous in expand_x
        counts = tok_nums.numpy().copy()
        if sc["type"] == 0:
            counts = np.diff(np.concatenate([[0], counts]))
        total = int(counts.sum())
        if sc["quant"]:
            xf = expand_x[:total].numpy().astype(np.float32) * dyn[:total].numpy()[:, None]
        else:
            xf = npv(expand_x[:total]).astype(np.float32)
        y = np.zeros((expand_x.shape[0], sc["H"]), BF16)
        start = 0
        for j, c in enumerate(counts.tolist()):
            if rank < sc["S"]:
                weight = shared[rank // (sc["S"] // sc["shared_num"])]
            else:
                weight = routed[(rank - sc["S"]) * (sc["E"] // (world - sc["S"])) + j]
            y[start:start + c] = expert_fn(xf[start:start + c], weight)
            start += c
        ckw = dict(shared_expert_num=sc["shared_num"], shared_expert_rank_num=sc["S"], global_bs=sc["global_bs"],
                   tp_send_counts=tp_recv)
        if inp["mask"] is not None:
            ckw["x_active_mask"] = t(inp["mask"])
        if inp["shared_x"] is not None:
            ckw["shared_expert_x"] = bf16(inp["shared_x"])
        if not v1:
            ckw["expand_scales"] = exp_scales
        out = combine(bf16(y), t(inp["ids"]), assist, ep_recv, t(inp["w"]), name, world, rank, sc["E"], **ckw)
        results[sc["name"]] = dict(expand_x=npv(expand_x), dynamic_scales=npv(dyn), assist=npv(assist),
                                   expert_token_nums=npv(tok_nums), ep_recv_counts=npv(ep_recv),
                                   tp_recv_counts=npv(tp_recv), expand_scales=npv(exp_scales), out=npv(out),
                                   stats=ep.last_exchange_stats())
    return results


def _other_surfaces(name, rank, world):
    """plain_v2's dispatch again through torch.ops.ascend_moe, the torch_npu drop-in, the public op compiled
    with fullgraph=True and a fake-tensor trace
    (the declared op's shape rule, which aclnn's output allocation uses too)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from ascend_moe import compat, products

    def npv(z):
        return z.view(torch.int16).numpy().view(BF16).copy() if z.dtype == torch.bfloat16 else z.numpy().copy()

    sc = SCENARIOS[2][0]
    products.set_target(sc["product"])
    inp = make_inputs(sc, rank)
    x = torch.from_numpy(inp["x"].view(np.int16)).view(torch.bfloat16)
    ids, w = torch.from_numpy(inp["ids"]), torch.from_numpy(inp["w"])
    kw = dict(shared_expert_num=sc["shared_num"], shared_expert_rank_num=sc["S"], quant_mode=sc["quant"],
              global_bs=sc["global_bs"], expert_token_nums_type=sc["type"])
    via_ops = torch.ops.ascend_moe.npu_moe_distribute_dispatch_v2(x, ids, name, world, rank, sc["E"],
                                                                 expert_scales=w, **kw)
    compat.install(mindspeed=False)
    import torch_npu
    via_drop_in = torch_npu.npu_moe_distribute_dispatch_v2(x, ids, name, world, rank, sc["E"], expert_scales=w, **kw)
    import ascend_moe

    def dispatch(x_, ids_, w_):
        return ascend_moe.npu_moe_distribute_dispatch_v2(x_, ids_, name, world, rank, sc["E"], expert_scales=w_, **kw)
    # both ranks compile and run the exchange together (one graph, the op opaque in it)
    via_compiled = torch.compile(dispatch, fullgraph=True, backend="aot_eager")(x, ids, w)
    with FakeTensorMode() as mode:
        fake = torch.ops.ascend_moe.npu_moe_distribute_dispatch_v2(
            mode.from_tensor(x), mode.from_tensor(ids), name, world, rank, sc["E"], expert_scales=mode.from_tensor(w),
            **kw)
    return dict(ops=[npv(t) for t in via_ops], drop_in=[npv(t) for t in via_drop_in],
                compiled=[npv(t) for t in via_compiled],
                fake=[(tuple(t.shape), str(t.dtype).replace("torch.", "")) for t in fake])


def _use_counts_after_exchanges(group, rank, n=100):
    """The references each exchange's tensors hold right after it returns (gloo's worker thread must have
    let go: a tensor it frees last needs the GIL, and at interpreter exit that aborts the process), and
    an object all-gather of objects of different sizes per rank."""
    import torch
    from ascend_moe import distributed as ep
    counts = []
    for i in range(n):
        out, inp = torch.empty(2, dtype=torch.int64), torch.full((2,), 10 * rank + i, dtype=torch.int64)
        ep._all_to_all(out, inp, [1, 1], [1, 1], group, "use-count probe", "test")
        counts.append((out._use_count(), inp._use_count(), out.tolist()))
    gathered = ep._all_gather_object({"rank": rank, "pad": "x" * (1000 * rank)}, group, "object probe", "test")
    return dict(counts=counts, gathered=gathered)


def _expect_failure(fn):
    started = time.monotonic()
    try:
        fn()
        return dict(error=None, seconds=time.monotonic() - started)
    except Exception as e:  # noqa: BLE001 - the test inspects what was raised
        return dict(error=type(e).__name__, message=str(e), seconds=time.monotonic() - started,
                    rule_ids=[v.rule_id for v in getattr(e, "violations", [])])


def _worker(rank, world, port, out_dir, fail_case):
    import torch
    import torch.distributed as dist
    from ascend_moe import distributed as ep
    from ascend_moe import products

    warnings.simplefilter("ignore")
    results = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=30))
        ep.set_timeout(20)
        group = dist.new_group(list(range(world)))
        name = ep.get_hccl_comm_name(group, rank)
        results["group_name"] = name
        results["resolved_is_group"] = ep.resolve_group(name) is group
        results.update(_run_scenarios(group, name, rank, SCENARIOS[world]))
        if world == 2:
            from ascend_moe import ep_layer, model_check
            products.set_target(None, None)
            results["layer"] = ep_layer.run_rank(model_check.moe_config_from_hf(SMALL_MODEL, "small"), tokens=3)
            for quant in ("w8a8", "w4a8"):
                results[f"layer_{quant}"] = ep_layer.run_rank(model_check.moe_config_from_hf(SMALL_MODEL, "small"),
                                                              tokens=3, quant=quant, keep_tensors=True)
            results["surfaces"] = _other_surfaces(name, rank, world)
            results["released"] = _use_counts_after_exchanges(group, rank)
        if world == 4:
            # a 2-rank EP group inside the 4 processes: group_ep names a sub-group, ep_rank_id is the rank in it
            sub = dist.new_group([1, 3])
            if rank in (1, 3):
                results["sub_name"] = ep.get_hccl_comm_name(sub, rank)
                results["sub"] = _run_scenarios(sub, results["sub_name"], dist.get_rank(sub), SUBGROUP_SCENARIOS)
        if fail_case:
            products.set_target("atlas-a2")
            sc = scenario("bad", world, 8, 2)
            inp = make_inputs(sc, rank)
            x = torch.from_numpy(inp["x"].view(np.int16)).view(torch.bfloat16)
            ids = torch.from_numpy(inp["ids"])
            # rank 2 disagrees on the expert count: every rank must raise, quickly, naming rank 2
            results["bad"] = _expect_failure(lambda: ep.npu_moe_distribute_dispatch_v2(
                x, ids, name, world, rank, 12 if rank == 2 else 8))
            # rank 3 passes a float32 x: its local rule fails, and every rank reports it
            x3 = x.float() if rank == 3 else x
            results["bad_dtype"] = _expect_failure(lambda: ep.npu_moe_distribute_dispatch_v2(
                x3, ids, name, world, rank, 8))
            # rank 1 passes a non-tensor: an error outside the rules still reaches the peers
            ids1 = "not a tensor" if rank == 1 else ids
            results["bad_type"] = _expect_failure(lambda: ep.npu_moe_distribute_combine_v2(
                x, ids1, ids, ids, ids, name, world, rank, 8))
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        results["crash"] = traceback.format_exc()
    save_rank_result(out_dir, rank, results)


def _launch_once(world, out_dir, fail_case):
    results = spawn_ranks(_worker, world, out_dir, RUN_TIMEOUT, args=(fail_case,))
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r} crashed:\n{res['crash']}"
    return results


def _launch(world, tmp_path_factory, fail_case):
    """Launch the workers; a launch whose processes die before reporting (the machine, not the code
    under test: a port taken between choosing and binding it, a killed process) is retried once."""
    first = None
    for attempt in range(2):
        out_dir = str(tmp_path_factory.mktemp(f"ep{world}_{attempt}"))
        try:
            return _launch_once(world, out_dir, fail_case)
        except (AssertionError, TimeoutError):
            raise
        except Exception as e:  # noqa: BLE001 - ProcessExitedException, a missing result file
            if first is not None:
                raise RuntimeError(f"{world} EP processes failed twice; first: {first!r}") from e
            first = e
            warnings.warn(f"retrying the {world}-process launch after: {e!r}")


@pytest.fixture(scope="module")
def ep2(tmp_path_factory):
    return _launch(2, tmp_path_factory, fail_case=False)


@pytest.fixture(scope="module")
def ep4(tmp_path_factory):
    return _launch(4, tmp_path_factory, fail_case=True)


# ------------------------------------------------------------------ single-process references ------

def ref_quant_row(row, smooth_row):
    """Integer reference of the dynamic int8 quantisation of one row: (ints, scale)."""
    xf = [np.float32(v) for v in row.astype(np.float32)]
    if smooth_row is not None:
        xf = [np.float32(a * np.float32(b)) for a, b in zip(xf, smooth_row)]
    amax = max(abs(v) for v in xf)
    ds = np.float32(np.float32(127.0) / amax)
    ints = [int(round(float(np.float32(v * ds)))) for v in xf]  # round() is half-to-even
    return np.array(ints, np.int64), np.float32(np.float32(1.0) / ds)


def valid(sc, inp, t, kk):
    m = inp["mask"]
    if m is None:
        return True
    return bool(m[t]) if m.ndim == 1 else bool(m[t, kk])


def active(sc, inp, t):
    m = inp["mask"]
    if m is None:
        return True
    return bool(m[t]) if m.ndim == 1 else bool(m[t].any())


def reference(sc):
    """Per rank: the rows it receives in the kernel's order, and the combine output."""
    world, s_ranks, e_num, k = sc["W"], sc["S"], sc["E"], sc["K"]
    n_shared = sc["shared_num"] if s_ranks else 0
    local = e_num // (world - s_ranks)
    inputs = [make_inputs(sc, r) for r in range(world)]
    routed, shared, smooth = model_weights(sc)

    def sent_row(r, t, expert_row_index):
        x = inputs[r]["x"][t]
        if not sc["quant"]:
            return x, None, x.astype(np.float32)
        ints, scale = ref_quant_row(x, None if smooth is None else smooth[expert_row_index])
        return ints, scale, (ints.astype(np.float32) * scale).astype(np.float32)

    recv = {}
    for q in range(world):
        rows = []  # (values, scale, (src, t, k), weight)
        if q < s_ranks:
            per = s_ranks // n_shared
            for r in range(world):
                for s in range(n_shared):
                    if r % per + s * per != q:
                        continue
                    for t in range(sc["BS"][r]):
                        if active(sc, inputs[r], t):
                            vals, scale, _ = sent_row(r, t, s)
                            rows.append((vals, scale, (r, t, k + s), 0.0, s))
            counts = [[sum(1 for row in rows if row[2][0] == r)] for r in range(world)]
        else:
            counts = [[0] * local for _ in range(world)]
            for j in range(local):
                e = (q - s_ranks) * local + j
                for r in range(world):
                    for t in range(sc["BS"][r]):
                        for kk in range(k):
                            if valid(sc, inputs[r], t, kk) and inputs[r]["ids"][t, kk] == e:
                                vals, scale, _ = sent_row(r, t, n_shared + e)
                                rows.append((vals, scale, (r, t, kk), inputs[r]["w"][t, kk], j))
                                counts[r][j] += 1
        recv[q] = dict(rows=rows, counts=counts)

    outs = []
    for r in range(world):
        inp = inputs[r]
        out = np.zeros((sc["BS"][r], sc["H"]), BF16)
        for t in range(sc["BS"][r]):
            if not active(sc, inp, t):
                continue
            acc = np.zeros(sc["H"], np.float32)
            for kk in range(k):
                if not valid(sc, inp, t, kk):
                    continue
                e = int(inp["ids"][t, kk])
                _, _, xf = sent_row(r, t, n_shared + e)
                y = expert_fn(xf[None, :], routed[e])[0].astype(np.float32)
                acc = (acc + (y * np.float32(inp["w"][t, kk])).astype(np.float32)).astype(np.float32)
            for s in range(n_shared):
                _, _, xf = sent_row(r, t, s)
                y = expert_fn(xf[None, :], shared[s])[0].astype(np.float32)
                acc = (acc + y).astype(np.float32)
            if inp["shared_x"] is not None and sc["version"] == "v2":   # v1: not passed to the device
                acc = (acc + inp["shared_x"][t].astype(np.float32)).astype(np.float32)
            out[t] = acc.astype(BF16)
        outs.append(out)
    return inputs, recv, outs


# ------------------------------------------------------------------ the tests ----------------------

def _bits(a):
    a = np.asarray(a)
    return a.view(np.int16) if a.dtype == BF16 else a


def _check_scenario(results, sc):
    inputs, recv, outs = reference(sc)
    world = sc["W"]
    for q in range(world):
        got = results[q][sc["name"]]
        rows = recv[q]["rows"]
        n = len(rows)
        # expand_x: local expert, then source rank, then the sender's (token, k) order
        want_x = np.array([row[0] for row in rows]).reshape(n, sc["H"])
        if sc["quant"]:
            assert got["expand_x"].dtype == np.int8
            np.testing.assert_array_equal(got["expand_x"][:n].astype(np.int64), want_x, err_msg=f"rank {q} int8 rows")
            want_scales = np.array([row[1] for row in rows], np.float32)
            np.testing.assert_array_equal(got["dynamic_scales"][:n].view(np.int32), want_scales.view(np.int32))
        else:
            np.testing.assert_array_equal(_bits(got["expand_x"][:n]), _bits(want_x.astype(BF16)),
                                          err_msg=f"rank {q} expand_x")
            assert np.isnan(got["dynamic_scales"]).all()  # not written without quantisation
        # counts in every form
        counts = np.array(recv[q]["counts"], np.int64)  # [r, j]
        per_expert = counts.sum(axis=0)
        want_tok = per_expert if sc["type"] == 1 else np.cumsum(per_expert)
        np.testing.assert_array_equal(got["expert_token_nums"], want_tok, err_msg=f"rank {q} expert_token_nums")
        assert got["expert_token_nums"].dtype == np.int64
        running, want_recv = 0, []
        for j in range(counts.shape[1]):
            for r in range(world):
                running += counts[r, j]
                want_recv.append(running)
        np.testing.assert_array_equal(got["ep_recv_counts"], np.array(want_recv), err_msg=f"rank {q} ep_recv_counts")
        if sc["version"] == "v2":
            triples = got["assist"][:3 * n].reshape(n, 3)
            np.testing.assert_array_equal(triples, np.array([row[2] for row in rows]).reshape(n, 3))
            routed_rows = [i for i, row in enumerate(rows) if row[2][2] < sc["K"]]
            np.testing.assert_array_equal(got["expand_scales"][routed_rows],
                                          np.array([rows[i][3] for i in routed_rows], np.float32))
            shared_rows = [i for i, row in enumerate(rows) if row[2][2] >= sc["K"]]
            assert np.isnan(got["expand_scales"][shared_rows]).all()  # no routing weight: unspecified
        # combine: bit for bit against the single-process layer, active tokens only
        act = [t for t in range(sc["BS"][q]) if active(sc, inputs[q], t)]
        np.testing.assert_array_equal(_bits(results[q][sc["name"]]["out"][act]), _bits(outs[q][act]),
                                      err_msg=f"rank {q} combine output")
        inactive = [t for t in range(sc["BS"][q]) if t not in act]
        if inactive:  # the device leaves them unwritten; the simulator poisons them
            assert np.isnan(results[q][sc["name"]]["out"][inactive].astype(np.float32)).all()


@pytest.mark.parametrize("name", [s["name"] for s in SCENARIOS[2]])
def test_two_ranks_match_single_process_layer(ep2, name):
    _check_scenario(ep2, next(s for s in SCENARIOS[2] if s["name"] == name))


@pytest.mark.parametrize("name", [s["name"] for s in SCENARIOS[4]])
def test_four_ranks_match_single_process_layer(ep4, name):
    _check_scenario(ep4, next(s for s in SCENARIOS[4] if s["name"] == name))


def test_exchanges_return_after_the_backend_released_their_tensors(ep2):
    for rank, res in enumerate(ep2):
        for i, (out_refs, inp_refs, got) in enumerate(res["released"]["counts"]):
            assert (out_refs, inp_refs) == (1, 1), (rank, i)
            assert got == [i, 10 + i], (rank, i)   # element q came from rank q
        assert res["released"]["gathered"] == [{"rank": q, "pad": "x" * (1000 * q)} for q in range(2)]


def test_group_name_resolves_to_the_torch_group(ep2):
    names = {res["group_name"] for res in ep2}
    assert len(names) == 1 and next(iter(names)).startswith("sim_hccl:")
    assert all(res["resolved_is_group"] for res in ep2)


def test_exchange_volume_is_reported(ep2):
    sc = SCENARIOS[2][0]
    inputs = [make_inputs(sc, r) for r in range(2)]
    for r, res in enumerate(ep2):
        stats = res[sc["name"]]["stats"]  # the last exchange: combine sends back what dispatch received
        assert stats["op"] == "npu_moe_distribute_combine_v2"
        received = sum(int((inputs[src]["ids"] // 4 == r).sum()) for src in range(2))
        assert stats["sent_rows"] == received


def test_inconsistent_expert_count_fails_on_every_rank(ep4):
    for r, res in enumerate(ep4):
        bad = res["bad"]
        assert bad["error"] == "ConstraintError", f"rank {r}: {bad}"
        assert "ep.identical_arguments" in bad["rule_ids"]
        assert "rank 2: 12" in bad["message"] and "moe_expert_num" in bad["message"]
        assert bad["seconds"] < 15, f"rank {r} took {bad['seconds']:.1f} s to fail"
    assert len({res["bad"]["message"] for res in ep4}) == 1  # the same error everywhere


def test_ep_group_can_be_a_subgroup(ep4):
    members = [ep4[1], ep4[3]]
    assert members[0]["sub_name"] == members[1]["sub_name"] != ep4[0]["group_name"]
    sc = SUBGROUP_SCENARIOS[0]
    _check_scenario([m["sub"] for m in members], sc)


@pytest.mark.parametrize("case, culprit, text", [
    ("bad_dtype", 3, "x dtype must be bfloat16 or float16, got float32"),
    # the call does not bind on rank 1 (the declared op's binder): the binder's TypeError reaches every rank
    ("bad_type", 1, "failed before the exchange: BindError: npu_moe_distribute_combine_v2: argument 'expert_ids' "
                    "must be a Tensor, got 'not a tensor'"),
])
def test_a_failing_rank_fails_every_rank_fast(ep4, case, culprit, text):
    for r, res in enumerate(ep4):
        bad = res[case]
        assert bad["error"] == "ConstraintError", f"rank {r}: {bad}"
        assert f"rank {culprit}: {text}" in bad["message"] or f"rank {culprit} {text}" in bad["message"]
        assert bad["seconds"] < 15
    assert len({res[case]["message"] for res in ep4}) == 1


def test_ep_layer_runs_gating_dispatch_gmm_combine_per_rank(ep2):
    for r, res in enumerate(ep2):
        layer = res["layer"]
        assert layer["rank"] == r and layer["world"] == 2 and layer["local_experts"] == 8 and layer["finite"]
        assert {"gating", "dispatch", "up-projection", "down-projection", "shared expert", "combine"} <= set(
            layer["timings"])
        assert layer["volume"]["dispatch"]["sent_rows"] == 3 * 4           # every (token, k) pair leaves once
        assert layer["volume"]["combine"]["sent_rows"] == layer["received_rows"]
        assert layer["volume"]["combine"]["recv_rows"] == 3 * 4
    assert sum(res["layer"]["received_rows"] for res in ep2) == 2 * 3 * 4


@pytest.mark.parametrize("sc", [s for w in (2, 4) for s in SCENARIOS[w]] + SUBGROUP_SCENARIOS, ids=lambda s: s["name"])
def test_all_ranks_in_one_process_match_the_references(sc):
    """sim.distribute's single-process driver (no torch.distributed) gives the same layer."""
    from ascend_moe.sim import distribute as D
    world = sc["W"]
    routed, shared, smooth = model_weights(sc)
    inputs = [make_inputs(sc, r) for r in range(world)]
    cfgs = [D.ep_config(sc["BS"][r], sc["K"], world, r, sc["E"], sc["shared_num"], sc["S"], sc["global_bs"])
            for r in range(world)]
    v1 = sc["version"] == "v1"
    outs, sends = D.dispatch_all_ranks(cfgs, [i["x"] for i in inputs], [i["ids"] for i in inputs],
                                       scales=smooth, x_active_masks=[i["mask"] for i in inputs],
                                       expert_scales=[i["w"] for i in inputs], quant_mode=sc["quant"],
                                       expert_token_nums_type=sc["type"], v1=v1)
    ys = []
    for q, res in enumerate(outs):
        counts = res.expert_token_nums if sc["type"] == 1 else np.diff(np.concatenate([[0], res.expert_token_nums]))
        total = int(counts.sum())
        xf = res.expand_x[:total].astype(np.float32)
        if sc["quant"]:
            xf = xf * res.dynamic_scales[:total][:, None]
        y, start = np.zeros((res.expand_x.shape[0], sc["H"]), BF16), 0
        for j, c in enumerate(counts.tolist()):
            weight = (shared[q // (sc["S"] // sc["shared_num"])] if q < sc["S"]
                      else routed[(q - sc["S"]) * (sc["E"] // (world - sc["S"])) + j])
            y[start:start + c] = expert_fn(xf[start:start + c], weight)
            start += c
        ys.append(y)
    finals = D.combine_all_ranks(cfgs, ys, outs, [i["ids"] for i in inputs], [i["w"] for i in inputs],
                                 x_active_masks=[i["mask"] for i in inputs],
                                 # the v1 op does not pass shared_expert_x on (the NumPy driver is below the op)
                                 shared_expert_x=[None if v1 else i["shared_x"] for i in inputs],
                                 v1_sends=sends if v1 else None)
    results = [{sc["name"]: dict(expand_x=o.expand_x, dynamic_scales=o.dynamic_scales, assist=o.assist_info_for_combine,
                                 expert_token_nums=o.expert_token_nums, ep_recv_counts=o.ep_recv_counts,
                                 expand_scales=o.expand_scales, out=f)} for o, f in zip(outs, finals)]
    _check_scenario(results, sc)


def test_declared_op_surfaces_agree_and_allocate_op_plugins_sizes(ep2):
    """The same dispatch through torch.ops.ascend_moe, the torch_npu drop-in and a fullgraph-compiled call gives
    the same bits as through
    ascend_moe.distributed; the fake-tensor trace (the shape rule) and the real outputs have op-plugin's sizes,
    written out here from MoeDistributeDispatchV2KernelOpApi.cpp: L = E / W local experts, A = global_bs *
    min(L, K), assist [max(BS*K, A*128)], ep_recv_counts [W*L + 2*global_bs*K*(W // 8)] with expert_scales."""
    sc = SCENARIOS[2][0]
    keys = ["expand_x", "dynamic_scales", "assist", "expert_token_nums", "ep_recv_counts", "tp_recv_counts",
            "expand_scales"]
    W, E, K, gbs, H = sc["W"], sc["E"], sc["K"], sc["global_bs"], sc["H"]
    L = E // W
    A = gbs * min(L, K)
    want = [((A, H), "bfloat16"), ((A,), "float32"), ((max(sc["BS"][0] * K, A * 128),), "int32"), ((L,), "int64"),
            ((W * L + 2 * gbs * K * (W // 8),), "int32"), ((0,), "int32"), ((A,), "float32")]
    for r, res in enumerate(ep2):
        surf = res["surfaces"]
        assert surf["fake"] == want, r
        for key, got_ops, got_drop, got_compiled in zip(keys, surf["ops"], surf["drop_in"], surf["compiled"]):
            ref = res[sc["name"]][key]
            assert (tuple(ref.shape), str(ref.dtype)) == want[keys.index(key)], (r, key)
            np.testing.assert_array_equal(_bits(got_ops), _bits(ref), err_msg=f"rank {r} {key} torch.ops")
            np.testing.assert_array_equal(_bits(got_drop), _bits(ref), err_msg=f"rank {r} {key} torch_npu")
            np.testing.assert_array_equal(_bits(got_compiled), _bits(ref),
                                          err_msg=f"rank {r} {key} torch.compile(fullgraph=True)")


def _bf16_to_f32(v):
    return np.asarray(v).astype(BF16).astype(np.float32)


def ref_w8a8_expert(x_row, q13, s13, q2, s2):
    """One token through one W8A8 expert as the MC2 path computes it, written out: the dispatch's dynamic
    int8 quantisation (ref_quant_row), the int32 GEMM in integer math, swiglu-quant's v1 dequant
    (x scale, then weight scale), SwiGLU (-a, exp, +1, a/t, g*t; exp as the float64 exp rounded to fp32,
    the simulator's named deviation), its per-token requant (amax/127, 1/scale, fp16 then int8 rounding),
    then the down-projection's int32 GEMM, * bf16 weight scale, * per-token scale, one bf16 rounding."""
    f32 = np.float32
    ints, x_scale = ref_quant_row(x_row, None)
    acc = ints.astype(np.int64) @ q13.astype(np.int64)
    n = q13.shape[1] // 2
    c = [f32(f32(f32(int(acc[j])) * x_scale) * f32(s13[j])) for j in range(2 * n)]
    s = []
    for j in range(n):
        a, g = c[j], c[n + j]
        t = f32(np.exp(np.float64(-a)))
        t = f32(t + f32(1.0))
        s.append(f32(g * f32(a / t)))
    amax = max(abs(v) for v in s)
    qs = f32(amax / f32(127.0))
    r = f32(f32(1.0) / qs)
    q = np.array([int(np.rint(np.float16(f32(v * r)))) for v in s], np.int64)
    acc2 = q @ q2.astype(np.int64)
    w2s = _bf16_to_f32(s2)
    return np.array([f32(f32(f32(int(acc2[j])) * w2s[j]) * qs) for j in range(q2.shape[1])], np.float32).astype(BF16)


def _fp19(scale):
    """A scale as the fixpipe reads it (the simulator's named FP19 assumption): the low 13 mantissa bits dropped."""
    return (np.asarray(scale, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def _msd_dequant(ints, q, scale):
    """A8W4 (MSD): the int8 row split into int4 halves hi = floor(x / 16), lo = (x & 15) - 8 (x = 16 hi + lo + 8),
    each half's int32 product with the int4 weight dequantised to fp16 (exact product, one rounding), then
    fp32(hi) * 16 + fp32(lo), plus the offline 8 * sum_k w * scale term; per output column."""
    f32 = np.float32
    hi = [v >> 4 for v in ints.tolist()]
    lo = [(v & 15) - 8 for v in ints.tolist()]
    fs = _fp19(scale)
    out = []
    for j in range(q.shape[1]):
        col = q[:, j].astype(np.int64).tolist()
        acc_hi = sum(a * b for a, b in zip(hi, col))
        acc_lo = sum(a * b for a, b in zip(lo, col))
        c_hi = np.float16(acc_hi * float(fs[j]))     # float64 product is exact here; one rounding to fp16
        c_lo = np.float16(acc_lo * float(fs[j]))
        c = f32(f32(f32(c_hi) * f32(16.0)) + f32(c_lo))
        term = f32(8 * float(sum(col)) * float(f32(scale[j])))
        out.append(f32(c + term))
    return out


def ref_w4a8_expert(x_row, q13, s13, q2, s2):
    """One token through one W4A8 expert: the dispatch's int8 row and scale, the MSD up-projection (above) times
    the token scale, SwiGLU and the v1 requant as in W8A8, then the MSD down-projection times the requant scale,
    one bf16 rounding."""
    f32 = np.float32
    ints, x_scale = ref_quant_row(x_row, None)
    c = [f32(v * x_scale) for v in _msd_dequant(ints, q13, s13)]
    n = q13.shape[1] // 2
    s = []
    for j in range(n):
        a, g = c[j], c[n + j]
        t = f32(f32(np.exp(np.float64(-a))) + f32(1.0))
        s.append(f32(g * f32(a / t)))
    qs = f32(max(abs(v) for v in s) / f32(127.0))
    r = f32(f32(1.0) / qs)
    q = np.array([int(np.rint(np.float16(f32(v * r)))) for v in s], np.int64)
    return np.array([f32(v * qs) for v in _msd_dequant(q, q2, s2)], np.float32).astype(BF16)


@pytest.mark.parametrize("quant", ["w8a8", "w4a8"])
def test_quantised_ep_layer_equals_a_single_process_reference(ep2, quant):
    """check --ep 2 --quant w8a8|w4a8 --run's layer (dispatch_v2 quant_mode=2 -> swiglu-quant -> quantised
    down-projection -> combine_v2) on 2 processes equals the same layer recomputed token by token here,
    bit for bit: every (token, k) pair through its expert (all experts share one weight in the run), the
    combine in fp32 (k order, weight multiply then add), then the shared expert's output, one bf16 rounding."""
    expert = ref_w8a8_expert if quant == "w8a8" else ref_w4a8_expert
    for r, res in enumerate(ep2):
        layer = res[f"layer_{quant}"]
        assert layer["quant"] == quant and layer["finite"]
        assert {"dispatch", "up + swiglu + quant", "down-projection", "combine"} <= set(layer["timings"])
        t = layer["tensors"]
        x, idx, w = t["x"], t["expert_idx"], t["routing_weights"]
        tokens, k = idx.shape
        want = np.zeros_like(t["output"])
        for tok in range(tokens):
            y = expert(x[tok], t["q13"], t["s13"], t["q2"], t["s2"]).astype(np.float32)
            acc = np.zeros(x.shape[1], np.float32)
            for kk in range(k):
                assert 0 <= idx[tok, kk] < 16
                acc = (acc + (y * np.float32(w[tok, kk])).astype(np.float32)).astype(np.float32)
            acc = (acc + t["shared_out"][tok].astype(np.float32)).astype(np.float32)
            want[tok] = acc.astype(BF16)
        np.testing.assert_array_equal(_bits(t["output"]), _bits(want), err_msg=f"rank {r} {quant} EP layer output")
    # the two ranks' tokens differ, the shared weights do not; w4a8 weights are int4 values
    layers = [res[f"layer_{quant}"]["tensors"] for res in ep2]
    assert not np.array_equal(layers[0]["x"], layers[1]["x"])
    for key in ("q13", "s13", "q2", "s2"):
        np.testing.assert_array_equal(layers[0][key], layers[1][key])
    if quant == "w4a8":
        assert layers[0]["q13"].min() >= -8 and layers[0]["q13"].max() <= 7
