"""A model's MoE block -> the exact op calls a deployment makes on an Atlas product, checked.

``python -m ascend_moe check --model deepseek-v3 --product atlas-a2`` reads a model config (a preset
shipped in ``ascend_moe/presets/`` or a Hugging Face ``config.json``), derives the op calls one MoE
layer makes for one forward step of ``tokens`` tokens, and runs every call through the constraint
checker (:func:`ascend_moe.check`) with :class:`ascend_moe.TensorSpec` arguments, so nothing is
allocated: a 671B model is checked in milliseconds.  With ``--run`` the same layer executes through
the simulator on random weights (:func:`run_plan`).

The deployment mapping (what the calls are, and why)
----------------------------------------------------
Notation: ``T`` tokens, ``E`` routed experts, ``E_l = E / ep`` experts local to one device (expert
parallelism; ``ep = 1`` by default), ``k`` experts per token, ``M = T*k`` expanded rows (with EP this
is the per-device average: ``T*k*ep`` rows leave the ranks and each rank receives ``T*k`` of them),
``H`` hidden size, ``I`` expert intermediate size.

1. **Gating**: ``npu_moe_gating_top_k(router_logits[T, E], k, bias=e_score_correction_bias[E],
   k_group=topk_group, group_count=n_group, group_select_mode, renorm, norm_type,
   routed_scaling_factor)``.

   - ``scoring_func`` sigmoid -> ``norm_type=1``; softmax (the default of every HF MoE config that
     has no ``scoring_func``) -> ``norm_type=0``.
   - ``bias`` is passed when the model has an ``e_score_correction_bias`` (DeepSeek-V3 style
     ``topk_method: noaux_tc``, and the model types listed in :data:`_BIAS_MODEL_TYPES`).
   - ``group_select_mode``: 1 (group score = sum of the group's top 2) with the bias, as DeepSeek-V3
     (HF ``DeepseekV3TopkRouter``: ``topk(2).sum``); 0 (group max) otherwise, as DeepSeek-V2's
     ``group_limited_greedy``.
   - ``renorm``: the op always renormalises sigmoid scores (spec gating A.3 step 6), so sigmoid
     models pass ``renorm=0`` (what the older torch_npu rules demand) and a sigmoid model with
     ``norm_topk_prob: false`` cannot be expressed: reported as the violation
     ``model.sigmoid_without_renorm``.  Softmax models with ``norm_topk_prob`` (Qwen3-MoE; Mixtral,
     where it is implied) pass ``renorm=1``; with ``host_renorm=True`` (CLI ``--host-renorm``) they
     pass ``renorm=0`` and renormalise on the host instead, as vllm-ascend does.
   - ``router_logits`` dtype: ``router_dtype`` (default bfloat16, the activation dtype of a bf16
     deployment; the bias is cast to the same dtype because the op requires it).
2. **Dispatch**: ``npu_moe_init_routing_v2(x[T, H], topk_ids int32[T, k], active_num=T*k,
   expert_num=E, expert_tokens_num_type=1, expert_tokens_num_flag=True)`` - vllm-ascend's all-gather
   dispatcher (its default): sorts the ``M`` expanded rows by expert (``expanded_x[M, H]``), returns the
   ``expanded_row_idx[M]`` gather index and per-expert counts (the ``group_list`` of the grouped matmuls).
   With ``ep > 1`` the call gets ``active_expert_range=[0, E_l)`` (rank 0's experts; every rank routes the
   gathered tokens and keeps its own range).  The checked grouped calls get a concrete ``group_list`` (a
   balanced split of ``M`` rows over ``E_l`` experts) so value rules run.
3. **Experts, unquantised** (``quant="none"``): ``npu_grouped_matmul`` as vllm-ascend calls it -
   ``x=[x_sorted[M, H]], weight=[w13[E_l, H, 2I]], group_list=counts[E_l], split_item=2,
   group_type=0, group_list_type=1`` - then ``npu_swiglu`` (``silu(first half) * second half``), then
   ``npu_grouped_matmul`` with ``w2[E_l, I, H]``.
   Why ``npu_grouped_matmul`` and not MindSpeed's ``npu_gmm``: this command checks an *inference
   deployment*, and torch_npu's op is what vllm-ascend calls; ``npu_gmm`` is MindSpeed's training
   wrapper (not a torch_npu op), and its ``List[int]`` group list is limited to 128 experts
   (spec grouped-matmul-family 1.3), which would reject every model here for a reason a
   deployment never meets.  Then the combine, as vllm-ascend's all-gather path calls it:
   ``npu_moe_token_unpermute(expert_out[M, H], expanded_row_idx int32[M], probs=topk_weights[T, k])``
   (with ``ep > 1`` the weights of other ranks' experts are zeroed, so their ``-1`` row indices are
   skipped, and the partial sums are all-reduced: communication, not checked); the shared expert's
   dense MLP output is added to it.
4. **Experts, W8A8** (``quant="w8a8"``), vllm-ascend's ``quant_apply_mlp``: ``npu_dynamic_quant(x bf16[M, H])``
   gives int8 rows and a per-token scale; ``npu_grouped_matmul_swiglu_quant(x int8[M, H], weight int8
   NZ[E_l, H, 2I], group_list cumsum[E_l], weight_scale fp32[E_l, 2I], x_scale fp32[M])`` (v1, the
   ``group_list_type=0`` fused path) gives int8 ``[M, I]`` and its per-token scale; the down-projection is
   ``npu_grouped_matmul(x=[int8[M, I]], weight=[int8 NZ[E_l, I, H]], scale=[bf16[E_l, H]],
   per_token_scale=[fp32[M]], group_list=counts, split_item=2, group_type=0, group_list_type=1,
   output_dtype=bf16)``; the shared expert runs as a dense MLP (not checked) and the combine is the
   ``npu_moe_token_unpermute`` call above.
5. **Experts, W4A8** (``quant="w4a8"``): the A8W4 variants of the same ops: int4 weights packed eight to
   an int32 (ND ``[E_l, H, 2I/8]`` and ``[E_l, I, H/8]``), per-channel scales as int64 (fp32 bits in the
   low word, spec 3.4; ``[E_l, 2I]`` and ``[E_l, H]``), and the offline ``8 * sum_k W*scale`` term
   (``bias`` of both calls).

6. **Expert parallelism** (``ep > 1``), vllm-ascend's MC2 token dispatcher: the dispatch is
   ``npu_moe_distribute_dispatch_v2(x[T, H], topk_ids int32[T, k], group_ep, ep_world_size=ep,
   ep_rank_id=0, moe_expert_num=E, expert_scales=topk_weights fp32[T, k], global_bs=T*ep,
   quant_mode=2 with a quantised expert path (the int8 rows and their per-token scale come out of the
   exchange, so there is no ``npu_dynamic_quant`` stage), else 0)`` and the combine is
   ``npu_moe_distribute_combine_v2`` with the dispatch's outputs as op-plugin allocates them
   (``expand_x [A, H]``, ``assist_info_for_combine``, ``ep_recv_counts`` as ``ep_send_counts``,
   ``tp_recv_counts``, ``expand_scales``); both checked by ``ascend_moe.rules.distribute`` for rank 0
   (the arguments that must agree across ranks are the same on every rank by construction).  The grouped
   calls in between see ``E_l`` experts and the average ``T*k`` received rows.
   ``--ep N --run`` runs this layer on N processes (:mod:`ascend_moe.ep_layer`).

What is not checked: the ops above marked "not checked" (they have no ascend-moe rules), attention,
the all-gather / all-reduce of the non-MC2 paths, and the dense shared-expert matmuls.
"""
from __future__ import annotations

import contextlib

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .products import PRODUCTS, Target, resolve_target
from .rules import TensorSpec, Violation, check, strict_docs
from .rules import routing as _routing_rules  # noqa: F401  (registers the dispatch / combine ops' rules)

PRESET_DIR = Path(__file__).resolve().parent / "presets"
QUANT_MODES = ("none", "w8a8", "w4a8")
BF16_CODE = 15      # torch.bfloat16 as npu_grouped_matmul's output_dtype (torch_npu's int code)
# the group_ep of the checked MC2 calls: a placeholder (the name is a run-time value; rules do not read it)
EP_GROUP_NAME = "ep_group"

# Model types whose router carries an e_score_correction_bias even if the config does not say
# ``topk_method: noaux_tc`` (HF DeepseekV3TopkRouter / Glm4MoeTopkRouter always create it).
_BIAS_MODEL_TYPES = {"deepseek_v3", "kimi_k2", "glm4_moe"}
# Model types that always renormalise the top-k softmax weights without a config field.
_IMPLIED_RENORM_MODEL_TYPES = {"mixtral"}


class ModelConfigError(ValueError):
    """The model config cannot be read or has no MoE block this mapping understands."""


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MoEConfig:
    """The fields of a model's MoE block the deployment mapping uses."""
    name: str
    hidden_size: int
    moe_intermediate_size: int
    num_experts: int
    top_k: int
    n_group: int = 1
    topk_group: int = 1
    scoring_func: str = "softmax"
    has_bias: bool = False
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    shared_intermediate_size: int = 0   # 0: no shared expert
    hidden_act: str = "silu"
    model_type: str = ""
    source: str = ""

    @property
    def group_select_mode(self) -> int:
        return 1 if self.has_bias else 0

    @property
    def norm_type(self) -> int:
        return 1 if self.scoring_func == "sigmoid" else 0


def _first(d: Dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if d.get(n) is not None:
            return d[n]
    return default


# Largest accepted size field: dims are int64 on the device, but a config asking for more than
# 2**31 of anything is a typo, and would make even the checker's bookkeeping huge.
MAX_CONFIG_DIM = 2 ** 31 - 1


def _config_int(name: str, field: str, value: Any, minimum: int = 1) -> int:
    """A size field of the config as an int in [minimum, MAX_CONFIG_DIM]; ModelConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelConfigError(f"{name}: {field} must be an integer, got {type(value).__name__} {value!r}"[:300])
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ModelConfigError(f"{name}: {field} must be an integer, got {value!r}")
    v = int(value)
    if not minimum <= v <= MAX_CONFIG_DIM:
        raise ModelConfigError(f"{name}: {field} must be in [{minimum}, {MAX_CONFIG_DIM}], got {value!r}")
    return v


def _config_real(name: str, field: str, value: Any) -> float:
    """A positive, finite scale factor of the config; ModelConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelConfigError(f"{name}: {field} must be a number, got {type(value).__name__} {value!r}"[:300])
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ModelConfigError(f"{name}: {field} must be a finite number > 0, got {value!r}")
    return v


def moe_config_from_hf(cfg: Dict[str, Any], name: str = "", source: str = "") -> MoEConfig:
    """Read the MoE block of a Hugging Face ``config.json`` dict (DeepSeek-V2/V3, Kimi K2, Qwen2/3-MoE,
    Mixtral, GLM-4-MoE and other configs using the same field names).  A field of the wrong type or
    out of range raises :class:`ModelConfigError` naming it."""
    if not isinstance(cfg, dict):
        raise ModelConfigError(f"{name or 'config'}: a model config must be a JSON object, got "
                               f"{'null' if cfg is None else type(cfg).__name__}")
    if "text_config" in cfg and not any(k in cfg for k in ("n_routed_experts", "num_experts",
                                                           "num_local_experts")):
        if not isinstance(cfg["text_config"], dict):
            raise ModelConfigError(f"{name or 'config'}: text_config must be a JSON object, got "
                                   f"{type(cfg['text_config']).__name__}")
        cfg = dict(cfg["text_config"], **{k: v for k, v in cfg.items() if k.startswith("_")})
    model_type = str(cfg.get("model_type", ""))
    experts = _first(cfg, "n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
    if not experts:
        raise ModelConfigError(
            f"{name or 'config'}: no MoE block found (none of n_routed_experts / num_experts / "
            "num_local_experts is set); this command checks MoE layers only")
    top_k = _first(cfg, "num_experts_per_tok", "moe_topk", "num_selected_experts")
    hidden = cfg.get("hidden_size")
    inter = _first(cfg, "moe_intermediate_size", "intermediate_size")
    missing = [n for n, v in (("num_experts_per_tok", top_k), ("hidden_size", hidden),
                              ("moe_intermediate_size/intermediate_size", inter)) if not v]
    if missing:
        raise ModelConfigError(f"{name or 'config'}: missing field(s) {', '.join(missing)}")
    scoring = str(cfg.get("scoring_func") or "softmax").lower()
    if scoring not in ("softmax", "sigmoid"):
        raise ModelConfigError(f"{name or 'config'}: scoring_func {scoring!r} has no "
                               "npu_moe_gating_top_k norm_type on A2/A3 (softmax -> 0, sigmoid -> 1)")
    has_bias = bool(cfg.get("e_score_correction_bias")) or cfg.get("topk_method") == "noaux_tc" \
        or model_type in _BIAS_MODEL_TYPES
    norm = cfg.get("norm_topk_prob")
    if norm is None:
        norm = model_type in _IMPLIED_RENORM_MODEL_TYPES
    who = name or "config"
    hidden = _config_int(who, "hidden_size", hidden)
    inter = _config_int(who, "moe_intermediate_size/intermediate_size", inter)
    experts = _config_int(who, "n_routed_experts/num_experts", experts)
    top_k = _config_int(who, "num_experts_per_tok", top_k)
    n_shared = _config_int(who, "n_shared_experts", cfg.get("n_shared_experts") or 0, minimum=0)
    shared = _config_int(who, "shared_expert_intermediate_size", cfg.get("shared_expert_intermediate_size") or 0,
                         minimum=0) or _config_int(who, "n_shared_experts * intermediate size", n_shared * inter,
                                                   minimum=0)
    return MoEConfig(
        name=name or str(cfg.get("_preset") or model_type or "model"),
        hidden_size=hidden, moe_intermediate_size=inter, num_experts=experts,
        top_k=top_k, n_group=_config_int(who, "n_group", cfg.get("n_group") or 1),
        topk_group=_config_int(who, "topk_group", cfg.get("topk_group") or 1),
        scoring_func=scoring, has_bias=has_bias, norm_topk_prob=bool(norm),
        routed_scaling_factor=_config_real(who, "routed_scaling_factor", cfg.get("routed_scaling_factor") or 1.0),
        shared_intermediate_size=shared, hidden_act=str(cfg.get("hidden_act") or "silu"),
        model_type=model_type, source=source or str(cfg.get("_source", "")))


def list_presets() -> Dict[str, str]:
    """Preset name -> its display name, from ``ascend_moe/presets/*.json``."""
    out = {}
    for p in sorted(PRESET_DIR.glob("*.json")):
        with open(p, encoding="utf-8") as f:
            out[p.stem] = json.load(f).get("_name", p.stem)
    return out


def load_model(model: Union[str, os.PathLike, Dict[str, Any]]) -> MoEConfig:
    """A preset name (``deepseek-v3``), a path to a Hugging Face ``config.json`` (or to the directory
    holding it), or a config dict."""
    if isinstance(model, dict):
        return moe_config_from_hf(model)
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ModelConfigError(f"cannot read {path}: {e}") from None
        except RecursionError:
            raise ModelConfigError(f"cannot read {path}: JSON nested too deeply") from None
        if not isinstance(cfg, dict):
            raise ModelConfigError(f"{path}: a model config must be a JSON object, got "
                                   f"{'null' if cfg is None else type(cfg).__name__}")
        return moe_config_from_hf(cfg, name=str(cfg.get("_preset") or path.parent.name or path.stem),
                                  source=str(cfg.get("_source") or path))
    key = text.strip().lower().replace("_", "-")
    preset = PRESET_DIR / f"{key}.json"
    if preset.is_file():
        with open(preset, encoding="utf-8") as f:
            return moe_config_from_hf(json.load(f), name=key)
    if text.endswith(".json") or os.sep in text:
        raise ModelConfigError(f"no such file: {text}")
    raise ModelConfigError(f"unknown model {text!r}: give a preset ({', '.join(list_presets())}) "
                           "or a path to a Hugging Face config.json")


# --------------------------------------------------------------------------------------------
# the plan: one MoE layer's op calls
# --------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One step of the layer: an ascend-moe op call (checked) or an external step (listed)."""
    name: str
    op: Optional[str]                  # ascend-moe op name, None for an external step
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    external: str = ""                 # what the deployment calls for an external step
    violations: List[Violation] = field(default_factory=list)
    error: str = ""                    # the checker itself failed (e.g. op not available)
    seconds: Optional[float] = None    # --run: wall time of this stage

    @property
    def checked(self) -> bool:
        return self.op is not None

    @property
    def errors(self) -> List[Violation]:
        strict = strict_docs()
        return [v for v in self.violations if v.severity == "error" or (strict and v.severity == "warning")]

    @property
    def unsimulated(self) -> List[Violation]:
        """Forms ascend-moe's simulator does not model: no verdict about the device."""
        return [v for v in self.violations if v.severity == "not-simulated"]

    @property
    def warnings(self) -> List[Violation]:
        return [v for v in self.violations if v not in self.errors and v.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.checked or (not self.error and not self.errors)

    @property
    def verdict(self) -> str:
        if not self.checked:
            return "not checked"
        if self.error:
            return "ERROR"
        if self.errors:
            return "FAIL"
        if self.unsimulated:
            return "not simulated"
        return f"PASS ({len(self.warnings)} doc warning{'s' if len(self.warnings) != 1 else ''})" \
            if self.warnings else "PASS"

    def key_arguments(self) -> str:
        if not self.checked:
            return self.external
        parts = [_fmt_value(a) for a in self.args]
        parts += [f"{k}={_fmt_value(v)}" for k, v in self.kwargs.items() if v is not None]
        return ", ".join(parts)


def _fmt_value(v: Any) -> str:
    if isinstance(v, TensorSpec):
        fmt = " NZ" if v.format.startswith("FRACTAL_NZ") else ""
        return f"{v.dtype}{list(v.shape)}{fmt}".replace(" ", "")
    if isinstance(v, (list, tuple)) and v and all(isinstance(i, TensorSpec) for i in v):
        return "[" + ", ".join(_fmt_value(i) for i in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v)


@dataclass
class Dims:
    tokens: int
    experts: int
    local_experts: int
    top_k: int
    hidden: int
    inter: int
    ep: int

    @property
    def rows(self) -> int:
        return self.tokens * self.top_k


# Tokens of one step the checker accepts (a step larger than this is a typo; expanded rows index
# with int32 on the device's routing ops).
MAX_TOKENS = 2 ** 31 - 1
# Concrete row_index values (for the value rules) are built only up to this many expanded rows.
MAX_CONCRETE_ROWS = 1 << 22


def dims_of(cfg: MoEConfig, tokens: int, ep: int = 1) -> Dims:
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or not 1 <= tokens <= MAX_TOKENS:
        raise ValueError(f"tokens must be an integer in [1, {MAX_TOKENS}], got {tokens!r}")
    if isinstance(ep, bool) or not isinstance(ep, (int, np.integer)):
        raise ValueError(f"ep must be an integer, got {ep!r}")
    if ep < 1 or cfg.num_experts % ep:
        raise ValueError(f"--ep {ep} must divide the expert count {cfg.num_experts}")
    return Dims(tokens, cfg.num_experts, cfg.num_experts // ep, cfg.top_k, cfg.hidden_size,
                cfg.moe_intermediate_size, ep)


def balanced_counts(rows: int, groups: int) -> np.ndarray:
    """``rows`` split over ``groups`` as evenly as possible (the first ``rows % groups`` get one more)."""
    counts = np.full(groups, rows // groups, dtype=np.int64)
    counts[: rows % groups] += 1
    return counts


def _mapping_violation(cfg: MoEConfig, rule_id: str, argument: str, message: str, fix: str,
                       target: Target) -> Violation:
    return Violation(rule_id=rule_id, op="npu_moe_gating_top_k", argument=argument, message=message,
                     product=target.product, cann=str(target.cann), version_range="all CANN versions",
                     source="ascend_moe.model_check deployment mapping", fix=fix, status=None)


def plan_layer(cfg: MoEConfig, *, quant: str = "none", tokens: int = 4, ep: int = 1,
               router_dtype: str = "bfloat16", host_renorm: bool = False) -> List[Stage]:
    """The stages of one MoE layer for ``tokens`` tokens (see the module docstring)."""
    if quant not in QUANT_MODES:
        raise ValueError(f"quant must be one of {QUANT_MODES}, got {quant!r}")
    if cfg.hidden_act not in ("silu", "swish"):
        raise ModelConfigError(f"{cfg.name}: hidden_act {cfg.hidden_act!r}; the expert paths mapped "
                               "here are SwiGLU (silu) only")
    d = dims_of(cfg, tokens, ep)
    T, E, El, M, H, I = d.tokens, d.experts, d.local_experts, d.rows, d.hidden, d.inter
    counts = balanced_counts(M, El)
    cumsum = np.cumsum(counts)
    # expanded row -> its token (any order works); only materialised for steps of a sane size, so a
    # huge --tokens is checked on shapes alone instead of allocating the index
    row_index = np.arange(M, dtype=np.int64) // d.top_k if M <= MAX_CONCRETE_ROWS else None
    gl_counts = TensorSpec((El,), "int64", values=counts)
    gl_cumsum = TensorSpec((El,), "int64", values=cumsum)
    stages: List[Stage] = []

    softmax_renorm = cfg.norm_type == 0 and cfg.norm_topk_prob
    stages.append(Stage(
        "gating", "npu_moe_gating_top_k",
        (TensorSpec((T, E), router_dtype), cfg.top_k),
        dict(bias=TensorSpec((E,), router_dtype) if cfg.has_bias else None,
             k_group=cfg.topk_group, group_count=cfg.n_group, group_select_mode=cfg.group_select_mode,
             renorm=1 if softmax_renorm and not host_renorm else 0, norm_type=cfg.norm_type,
             out_flag=False, routed_scaling_factor=cfg.routed_scaling_factor, eps=1e-20)))
    if softmax_renorm and host_renorm:
        stages.append(Stage("renormalise", None, external="y / y.sum(-1) on the host (vllm-ascend's "
                                                           "softmax + norm_topk_prob path)"))
    combine: Stage
    if ep > 1:
        dispatch, combine = _mc2_stages(d, quantised=quant != "none", router_dtype=router_dtype)
        stages.append(dispatch)
    else:
        stages.append(Stage(
            "dispatch", "npu_moe_init_routing_v2",
            (TensorSpec((T, H), "bfloat16"), TensorSpec((T, d.top_k), "int32")),
            dict(active_num=M, expert_num=E, expert_tokens_num_type=1, expert_tokens_num_flag=True)))
        combine = Stage(
            "combine", "npu_moe_token_unpermute",
            (TensorSpec((M, H), "bfloat16"), TensorSpec((M,), "int32")),
            dict(probs=TensorSpec((T, d.top_k), router_dtype)))
    shared = cfg.shared_intermediate_size
    shared_text = (f"dense SwiGLU MLP [{H} -> {2 * shared} -> {H}] (torch_npu matmuls)" if shared else "")

    if quant == "none":
        stages.append(Stage(
            "up-projection", "npu_grouped_matmul",
            ([TensorSpec((M, H), "bfloat16")], [TensorSpec((El, H, 2 * I), "bfloat16")]),
            dict(group_list=gl_counts, split_item=2, group_type=0, group_list_type=1)))
        stages.append(Stage("activation", "npu_swiglu", (TensorSpec((M, 2 * I), "bfloat16"),), {}))
        stages.append(Stage(
            "down-projection", "npu_grouped_matmul",
            ([TensorSpec((M, I), "bfloat16")], [TensorSpec((El, I, H), "bfloat16")]),
            dict(group_list=gl_counts, split_item=2, group_type=0, group_list_type=1)))
        if shared:
            stages.append(Stage("shared expert", None, external=shared_text))
        stages.append(combine)
        return stages

    if ep == 1:   # with MC2 the dispatch quantises (quant_mode=2)
        stages.append(Stage("quantise x", "npu_dynamic_quant", (TensorSpec((M, H), "bfloat16"),), {}))
    if quant == "w8a8":
        w13 = TensorSpec((El, H, 2 * I), "int8", "FRACTAL_NZ")
        w13_scale = TensorSpec((El, 2 * I), "float32")
        sq_extra: Dict[str, Any] = {}
        w2 = TensorSpec((El, I, H), "int8", "FRACTAL_NZ")
        w2_scale = TensorSpec((El, H), "bfloat16")          # vllm-ascend: the params dtype (output_dtype)
        fr_bias = None
    else:  # w4a8: int4 packed eight to an int32 along the last dim, int64 scales
        for what, n in (("2*moe_intermediate_size", 2 * I), ("hidden_size", H)):
            if n % 8:
                raise ModelConfigError(f"{cfg.name}: w4a8 packs int4 eight to an int32 along N; "
                                       f"{what} = {n} is not a multiple of 8")
        w13 = TensorSpec((El, H, 2 * I // 8), "int32")
        w13_scale = TensorSpec((El, 2 * I), "int64")
        sq_extra = dict(bias=TensorSpec((El, 2 * I), "float32"))
        w2 = TensorSpec((El, I, H // 8), "int32")
        w2_scale = TensorSpec((El, H), "int64")
        fr_bias = TensorSpec((El, H), "float32")
    stages.append(Stage(
        "up + swiglu + quant", "npu_grouped_matmul_swiglu_quant",
        (TensorSpec((M, H), "int8"), w13, gl_cumsum, w13_scale, TensorSpec((M,), "float32")),
        sq_extra))
    if shared:
        stages.append(Stage("shared expert", None, external=shared_text))
    stages.append(Stage(
        "down-projection", "npu_grouped_matmul",
        ([TensorSpec((M, I), "int8")], [w2]),
        dict(scale=[w2_scale], bias=None if fr_bias is None else [fr_bias],
             per_token_scale=[TensorSpec((M,), "float32")], group_list=gl_counts, split_item=2, group_type=0,
             group_list_type=1, output_dtype=BF16_CODE)))
    stages.append(combine)
    return stages


def _mc2_stages(d: "Dims", *, quantised: bool, router_dtype: str) -> Tuple[Stage, Stage]:
    """Rank 0's ``npu_moe_distribute_dispatch_v2`` / ``_combine_v2`` calls (module docstring, item 6); the
    combine's inputs are the dispatch's outputs with the shapes op-plugin allocates (the declaration's
    shape rule)."""
    from .opdecl import get_decl
    from .rules import bind
    T, E, H, k, ep = d.tokens, d.experts, d.hidden, d.top_k, d.ep
    op = "npu_moe_distribute_dispatch_v2"
    args = (TensorSpec((T, H), "bfloat16"), TensorSpec((T, k), "int32"), EP_GROUP_NAME, ep, 0, E)
    kwargs = dict(expert_scales=TensorSpec((T, k), "float32"), global_bs=T * ep, quant_mode=2 if quantised else 0)
    dispatch = Stage("ep dispatch", op, args, kwargs)
    try:
        outs = get_decl(op).shape(bind(op, args, kwargs))
    except Exception:  # noqa: BLE001 - a malformed call: its own stage reports it; size the combine plainly
        rows = T * ep * min(d.local_experts, k)
        outs = [((rows, H), "bfloat16"), ((rows,), "float32"), ((max(T * k, rows * 128),), "int32"),
                ((d.local_experts,), "int64"), ((ep * d.local_experts,), "int32"), ((0,), "int32"),
                ((rows,), "float32")]
    (rows, _), _ = outs[0]
    combine = Stage(
        "ep combine", "npu_moe_distribute_combine_v2",
        (TensorSpec((rows, H), "bfloat16"), TensorSpec((T, k), "int32"), TensorSpec(*outs[2]),
         TensorSpec(*outs[4]), TensorSpec((T, k), "float32"), EP_GROUP_NAME, ep, 0, E),
        dict(tp_send_counts=TensorSpec(*outs[5]), expand_scales=TensorSpec(*outs[6]), global_bs=T * ep))
    return dispatch, combine


# --------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    config: MoEConfig
    target: Target
    quant: str
    dims: Dims
    stages: List[Stage]
    router_dtype: str = "bfloat16"
    host_renorm: bool = False

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)

    @property
    def checked(self) -> List[Stage]:
        return [s for s in self.stages if s.checked]


def check_stages(stages: Sequence[Stage], cfg: MoEConfig, target: Target) -> None:
    """Fill each checked stage's violations (every rule of every call, nothing computed)."""
    for s in stages:
        if not s.checked:
            continue
        try:
            s.violations = check(s.op, *s.args, product=target.product, cann=str(target.cann), **s.kwargs)
        except Exception as e:  # an op not available in this build, a signature mismatch
            s.error = f"{type(e).__name__}: {e}"
        if s.op == "npu_moe_gating_top_k" and cfg.norm_type == 1 and not cfg.norm_topk_prob:
            s.violations.append(_mapping_violation(
                cfg, "model.sigmoid_without_renorm", "norm_type",
                f"{cfg.name} scores with sigmoid and norm_topk_prob=false, but npu_moe_gating_top_k "
                "always renormalises sigmoid scores (the renorm argument is ignored for norm_type=1)",
                "renormalisation cannot be switched off in the op: gate on the host, or accept "
                "renormalised routing weights", target))


def check_model(model: Union[str, MoEConfig], product: Optional[str] = None, cann: Optional[str] = None,
                *, quant: str = "none", tokens: int = 4, ep: int = 1, router_dtype: str = "bfloat16",
                host_renorm: bool = False) -> Report:
    """Check one MoE layer of ``model`` on ``product`` / ``cann`` (defaults as :func:`ascend_moe.check`)."""
    cfg = model if isinstance(model, MoEConfig) else load_model(model)
    target = resolve_target(product, cann)
    stages = plan_layer(cfg, quant=quant, tokens=tokens, ep=ep, router_dtype=router_dtype,
                        host_renorm=host_renorm)
    check_stages(stages, cfg, target)
    return Report(cfg, target, quant, dims_of(cfg, tokens, ep), stages, router_dtype, host_renorm)


def _wrap(text: str, width: int, indent: str) -> List[str]:
    import textwrap
    return textwrap.wrap(text, width=max(width, 30), initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False) or [indent]


def format_report(rep: Report, width: int = 110) -> str:
    """The human-readable table: one row per stage (op, verdict), its key arguments below it, then
    each violation with its fix."""
    c, t, d = rep.config, rep.target, rep.dims
    lines = [f"model    {c.name}" + (f"  ({c.source.split()[0]})" if c.source else ""),
             f"MoE      {d.experts} experts, top-{d.top_k}, groups {c.n_group} keep {c.topk_group}, "
             f"{c.scoring_func}{' + bias' if c.has_bias else ''}, "
             f"norm_topk_prob {str(c.norm_topk_prob).lower()}, routed scaling {c.routed_scaling_factor:g}, "
             f"hidden {d.hidden}, expert intermediate {d.inter}, "
             + (f"shared expert intermediate {c.shared_intermediate_size}" if c.shared_intermediate_size
                else "no shared expert"),
             f"target   {t.product} ({PRODUCTS[t.product].name}), CANN {t.cann}"
             f"  [product: {t.product_source}; CANN: {t.cann_source}]",
             f"layer    {d.tokens} tokens -> {d.rows} expanded rows, quant {rep.quant}, router "
             f"{rep.router_dtype}" + (f", expert parallel {d.ep} ({d.local_experts} local experts)"
                                      if d.ep > 1 else ""),
             ""]
    name_w = max(len(s.name) for s in rep.stages)
    op_w = max(len(s.op or "-") for s in rep.stages)
    lines.append(f"{'#':>2}  {'stage':<{name_w}}  {'op':<{op_w}}  verdict")
    lines.append("-" * min(width, 2 + 2 + name_w + 2 + op_w + 2 + 24))
    for i, s in enumerate(rep.stages, 1):
        timing = f"   {s.seconds * 1e3:9.1f} ms" if s.seconds is not None else ""
        lines.append(f"{i:>2}  {s.name:<{name_w}}  {(s.op or '-'):<{op_w}}  {s.verdict}{timing}")
        lines += _wrap(s.key_arguments(), width, " " * 6)
        if s.error:
            lines += _wrap(f"checker error: {s.error}", width, " " * 6 + "! ")
        for v in s.errors + s.unsimulated + s.warnings:
            kind = "x" if v in s.errors else ("?" if v in s.unsimulated else "~")
            lines += _wrap(f"{kind} [{v.rule_id}] argument '{v.argument}': {v.message} "
                           f"(rule holds for {v.version_range})", width, " " * 6)
            if v.fix:
                lines += _wrap(f"fix: {v.fix}", width, " " * 10)
    n_checked = len(rep.checked)
    n_failed = sum(not s.passed for s in rep.checked)
    n_warn = sum(len(s.warnings) for s in rep.checked)
    if any(s.violations for s in rep.stages):
        lines.append("      (x = error: the device rejects the call or its result is undefined; ? = not simulated by "
                     "ascend-moe, no verdict about the device; ~ = doc-only rule the host code does not enforce)")
    lines.append("")
    verdict = "PASS" if rep.passed else "FAIL"
    n_unsim = sum(bool(s.unsimulated) and s.passed for s in rep.checked)
    lines.append(f"verdict  {verdict}: {n_checked - n_failed} of {n_checked} op calls pass on {t.product}, "
                 f"CANN {t.cann}" + (f"; {n_warn} doc-only warning(s) (ASCEND_MOE_STRICT_DOCS=1 makes them "
                                     "errors)" if n_warn else "")
                 + (f"; {n_unsim} call(s) not simulated by ascend-moe (no verdict about the device; --run "
                    "cannot compute them)" if n_unsim else "")
                 + "; steps marked 'not checked' are not ascend-moe ops")
    return "\n".join(lines)


def report_dict(rep: Report) -> Dict[str, Any]:
    """The report as JSON-ready data (``check --json``)."""
    def jv(v: Any) -> Any:
        if isinstance(v, TensorSpec):
            return {"shape": list(v.shape), "dtype": v.dtype, "format": v.format}
        if isinstance(v, (list, tuple)):
            return [jv(i) for i in v]
        if isinstance(v, (np.integer, np.floating)):
            return v.item()
        return v
    return {
        "model": rep.config.name, "source": rep.config.source, "product": rep.target.product,
        "cann": str(rep.target.cann), "quant": rep.quant, "tokens": rep.dims.tokens, "ep": rep.dims.ep,
        "passed": rep.passed,
        "stages": [{
            "name": s.name, "op": s.op, "external": s.external or None, "verdict": s.verdict,
            "passed": s.passed, "error": s.error or None, "seconds": s.seconds,
            "args": [jv(a) for a in s.args], "kwargs": {k: jv(v) for k, v in s.kwargs.items()},
            "violations": [{"rule_id": v.rule_id, "argument": v.argument, "message": v.message,
                            "severity": v.severity, "kind": v.kind, "fix": v.fix, "source": v.source,
                            "version_range": v.version_range, "status": v.status}
                           for v in s.violations],
        } for s in rep.stages],
    }


# --------------------------------------------------------------------------------------------
# --run: the layer through the simulator
# --------------------------------------------------------------------------------------------


class Progress:
    """A plain-text progress bar on stderr, one line per finished stage (no dependencies)."""

    def __init__(self, total: int, stream=None, width: int = 24):
        self.total, self.done, self.width = total, 0, width
        self.stream = stream if stream is not None else sys.stderr

    def step(self, label: str, seconds: float) -> None:
        self.done += 1
        filled = round(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"[{bar}] {self.done}/{self.total} {label:<58} {seconds * 1e3:9.1f} ms\n")
        self.stream.flush()


# bytes of working memory `check --run` (and the EP layer's processes on one machine, together) may use
MEMORY_BUDGET = 4e9


def working_set_bytes(rep: "Report", expanded_rows: int) -> float:
    """Bytes of fp32 working memory one run of ``rep``'s layer needs: its tokens' router logits and scores
    and shared-expert rows, ``expanded_rows`` routed rows through both projections, one expert's weights
    and the shared expert's (``run_layer``: T * k rows; one EP rank: the rows it may receive)."""
    d, S = rep.dims, rep.config.shared_intermediate_size
    return 4.0 * (d.tokens * (2 * d.experts + 2 * d.hidden + 3 * S) + expanded_rows * (2 * d.hidden + 3 * d.inter)
                  + 3 * d.hidden * d.inter + 3 * d.hidden * S)


def run_layer(rep: Report, *, seed: int = 0, progress: Optional[Progress] = None,
              memory_budget: float = MEMORY_BUDGET) -> Dict[str, Any]:
    """Execute the planned layer through the simulator (the NumPy twins in :mod:`ascend_moe.sim`,
    the code the CPU backend runs; each twin checks its call first) on random weights.  Fills each
    stage's ``seconds``; returns ``{"output": y[T, H] bfloat16 ndarray, "expert_idx", "routing_weights",
    "timings", "inputs"}`` (``inputs``: the random tensors, one expert's weights and, for quantised
    paths, their integer values and scales, so a caller can recompute the layer).  NumPy only.

    Memory: full-size random weights do not fit (DeepSeek-V3: 256 experts x 44M parameters per
    layer), so every expert **shares one random expert weight**: ``w[E_l, K, N]`` is a stride-0
    ``np.broadcast_to`` view of one ``[K, N]`` array.  Routing, grouping, per-group work and every op
    call are those of the real layer; only the expert weights are identical across experts.  The
    simulator works group by group on ``w[e]`` views, so only one expert's fp32 copy exists at a
    time.  On a device the host would first copy a stride-0 weight contiguous (DataContiguous), and the
    sharing is a device of this run, not of the deployment; so each grouped
    call is checked with the weight described as a contiguous :class:`TensorSpec` of the same shape,
    dtype and format (every other argument as passed), and then runs the simulator's unchecked
    compute function (the one the CPU kernel runs after the same check).

    W4A8 exception: the A8W4 simulator converts the whole int4 weight at once
    (``sim.quant_gemm.weight_values``), which would materialise all ``E_l`` experts, so the w4a8
    run passes only the **experts this step touches** (renumbered ``0..n-1`` in expert order, with
    their group counts; the checked call has those ``n`` groups too) and refuses, naming the size,
    when even that exceeds ``memory_budget`` bytes.

    With ``ep > 1`` the run is rank 0's share: the rows routed to experts ``[0, E_l)``.
    """
    import ml_dtypes

    from . import sim
    from .rules import enforce
    from .rules.quant_ops import dynamic_quant_kernel
    from .sim import gmm as _gmm
    from .sim import routing as _rt
    from .sim import gmm_quant as _gq
    from .sim import quant_ops as _qsim
    from .sim import swiglu_quant as _sq
    from .sim.numerics import np_dtype

    bf16 = np.dtype(ml_dtypes.bfloat16)
    cfg, d, quant = rep.config, rep.dims, rep.quant
    T, E, El, k, H, I = d.tokens, d.experts, d.local_experts, d.top_k, d.hidden, d.inter
    S = cfg.shared_intermediate_size
    need = working_set_bytes(rep, expanded_rows=T * k)  # refuse before allocating what cannot fit
    if need > memory_budget:
        raise MemoryError(f"--run at {T} tokens needs about {need / 1e9:.1f} GB of working memory, more than the "
                          f"budget of {memory_budget / 1e9:.1f} GB; use fewer --tokens")
    rng = np.random.default_rng(seed)
    rdt = {"bfloat16": bf16, "float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}[rep.router_dtype]
    timings: List[Tuple[str, float]] = []
    ops_of = {s.name: s.op for s in rep.stages}

    class stage:
        def __init__(self, name: str):
            self.name = name

        def __enter__(self):
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            if exc[0] is not None:
                return False
            dt = time.perf_counter() - self.t0
            for st in rep.stages:
                if st.name == self.name and st.seconds is None:
                    st.seconds = dt
                    break
            timings.append((self.name, dt))
            if progress:
                op = ops_of.get(self.name)
                progress.step(self.name + (f" ({op})" if op else ""), dt)
            return False

    def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
        # uniform with unit variance (cheaper than normal draws for ~100M weights), times scale
        u = rng.random(shape, dtype=np.float32)
        return (u - np.float32(0.5)) * np.float32(scale * 12 ** 0.5)

    def to_bf16(a: np.ndarray) -> np.ndarray:
        """float32 -> bfloat16, round half to even, by integer ops (several times faster than
        ml_dtypes' cast on ~100M weights; exact for the finite values used here)."""
        u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
        u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
        return (u >> np.uint32(16)).astype(np.uint16).view(bf16)

    def bf16_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return to_bf16(a.astype(np.float32) @ b.astype(np.float32))

    def silu_mul(h: np.ndarray, n: int) -> np.ndarray:
        hf = h.astype(np.float32)
        g = hf[:, :n]
        return (g / (1 + np.exp(-g)) * hf[:, n:]).astype(bf16)

    with stage("setup"):
        x = to_bf16(randn(T, H))                                   # hidden states, unit variance
        w_gate = randn(H, E, scale=H ** -0.5)                      # router [H, E]
        bias = randn(E, scale=0.1).astype(rdt) if cfg.has_bias else None
        w13_one = randn(H, 2 * I, scale=H ** -0.5)                 # one expert (fp32 master copy)
        w2_one = randn(I, H, scale=I ** -0.5)
        if S:
            ws13 = to_bf16(randn(H, 2 * S, scale=H ** -0.5))
            ws2 = to_bf16(randn(S, H, scale=S ** -0.5))
        select_machine_kernels("bf16" if quant == "none" else "int8", T * k)
    target_kw = dict(product=rep.target.product, cann=str(rep.target.cann))
    from .products import target as _target
    from .rules import ConstraintWarning
    with _target(**target_kw), warnings.catch_warnings():
        # doc-only warnings were already reported by the check; errors still raise
        warnings.filterwarnings("ignore", category=ConstraintWarning)
        gating = next(st for st in rep.stages if st.op == "npu_moe_gating_top_k")
        with stage("gating"):
            logits = (x.astype(np.float32) @ w_gate).astype(rdt)
            y, idx, _ = sim.npu_moe_gating_top_k(logits, k, bias=bias, **{
                kk: v for kk, v in gating.kwargs.items() if kk != "bias"})
            weights = y.astype(np.float32)
        if "renormalise" in ops_of:
            with stage("renormalise"):
                weights = weights / weights.sum(-1, keepdims=True)
        dispatch = next(st for st in rep.stages if st.name == "dispatch")
        with stage("dispatch"):
            ids = idx.astype(np.int32)
            enforce("npu_moe_init_routing_v2", x, ids, **dispatch.kwargs)
            rng_kw = dispatch.kwargs.get("active_expert_range") or ()
            expanded, row_idx, counts, _ = _rt.moe_init_routing_v2(
                x, ids, **dict(dispatch.kwargs, active_expert_range=rng_kw))
            n_local = int(counts.sum())                       # rank 0 keeps its local experts
            x_sorted = expanded[:n_local]
        shared_out = None

        if quant == "none":
            w13 = np.broadcast_to(to_bf16(w13_one), (El, H, 2 * I))
            w2 = np.broadcast_to(to_bf16(w2_one), (El, I, H))
            gmm_kw = dict(group_list=counts, split_item=2, group_type=0, group_list_type=1)
            with stage("up-projection"), machine_gemm_kernels():
                enforce("npu_grouped_matmul", [x_sorted], [_contiguous_spec(w13)], **gmm_kw)
                h = _gmm.grouped_matmul_compute([x_sorted], [w13], None, counts, 2, 0, 1)[0]
            with stage("activation"):
                enforce("npu_swiglu", h)
                a = _qsim.swiglu(h)
            with stage("down-projection"), machine_gemm_kernels():
                enforce("npu_grouped_matmul", [a], [_contiguous_spec(w2)], **gmm_kw)
                o = _gmm.grouped_matmul_compute([a], [w2], None, counts, 2, 0, 1)[0]
            if S:
                with stage("shared expert"):
                    shared_out = bf16_matmul(silu_mul(bf16_matmul(x, ws13), S), ws2)
        else:
            with stage("quantise x"):
                enforce("npu_dynamic_quant", x_sorted)
                _, formula = dynamic_quant_kernel(rep.target, x_sorted.shape, "bfloat16")
                xq, xs = _qsim.dynamic_quant(x_sorted, scale_formula=formula)
            groups, g_counts = quant_groups(quant, counts, H, I, memory_budget)
            qw = quant_expert_weights(quant, w13_one, w2_one, groups)
            q13, s13, q2, s2 = qw.q13, qw.s13, qw.q2, qw.s2
            w13, w2, w13_spec, w2_spec = qw.w13, qw.w2, qw.w13_spec, qw.w2_spec
            w13_scale, w2_scale, sq_extra, fr_bias = qw.w13_scale, qw.w2_scale, qw.sq_extra, qw.fr_bias
            cum = np.cumsum(g_counts)
            with stage("up + swiglu + quant"), machine_gemm_kernels():
                enforce("npu_grouped_matmul_swiglu_quant", xq, w13_spec, cum,
                        w13_scale, xs, **sq_extra)
                a, a_scale = _sq.compute(xq, w13, w13_scale, xs, cum, group_list_type=0,
                                         assist=sq_extra.get("bias"), kernel="v1")
            if S:
                with stage("shared expert"):
                    shared_out = bf16_matmul(silu_mul(bf16_matmul(x, ws13), S), ws2)
            with stage("down-projection"), machine_gemm_kernels():
                gm_kw = dict(scale=[w2_scale], bias=None if fr_bias is None else [fr_bias],
                             per_token_scale=[a_scale], group_list=g_counts, split_item=2, group_type=0,
                             group_list_type=1, output_dtype=BF16_CODE)
                enforce("npu_grouped_matmul", [a], [w2_spec], **gm_kw)
                o = _gq.quant_grouped_matmul(a, w2, g_counts, group_list_type=1, scale=w2_scale,
                                             per_token_scale=a_scale, bias=fr_bias, output_dtype="bfloat16")
        combine = next(st for st in rep.stages if st.name == "combine")
        with stage("combine"):
            # the probs of other ranks' experts are zeroed (their -1 row indices are skipped)
            local = (idx >= 0) & (idx < El)
            probs = np.where(local, weights, 0).astype(np_dtype(combine.kwargs["probs"].dtype))
            o_full = np.zeros((T * k, H), dtype=o.dtype)
            o_full[:n_local] = o
            enforce("npu_moe_token_unpermute", o_full, row_idx, probs=probs)
            out = _rt.moe_token_unpermute(o_full, row_idx, probs)
            if shared_out is not None:
                out = (out.astype(np.float32) + shared_out.astype(np.float32)).astype(bf16)
    inputs = {"x": x, "w_gate": w_gate, "bias": bias, "w13": w13_one, "w2": w2_one}
    if S:
        inputs.update(shared_w13=ws13, shared_w2=ws2)
    if quant != "none":
        inputs.update(q13=q13, s13=s13, q2=q2, s2=s2)
    return {"output": out, "expert_idx": idx, "routing_weights": weights, "timings": timings,
            "inputs": inputs}


def select_machine_kernels(dtype: str, max_rows: int) -> None:
    """Make now the one-time per-machine choice of GEMM implementation (:func:`ascend_moe.kernels.choice`,
    cached) for the shape classes of ``dtype`` ("bf16", "int8", ...) that calls of up to ``max_rows`` rows
    use: on a machine that has not measured them yet it takes a second or two, which belongs to setting up,
    not to the first grouped stage that needs it."""
    try:
        from . import kernels as machine
    except ImportError:  # no torch: the NumPy reference kernels, nothing to choose
        return
    for rows in (1, machine.SKINNY_ROWS + 1, machine.NARROW_ROWS + 1, machine.WIDE_ROWS + 1):
        if rows <= max_rows:
            machine.choice(machine._shape_class(dtype, rows))


def machine_gemm_kernels() -> Any:
    """This machine's fastest faithful GEMM kernels (:mod:`ascend_moe.kernels`, chosen once per
    machine) for the grouped stages, as a context; the NumPy reference kernels when torch is not
    installed.  Integer GEMMs are exact either way."""
    from .sim import kernels as sim_kernels
    try:
        from . import kernels as machine
    except ImportError:
        return contextlib.nullcontext()
    return sim_kernels.use(machine.for_call())


def quant_groups(quant: str, counts: np.ndarray, hidden: int, inter: int,
                 memory_budget: float = MEMORY_BUDGET) -> Tuple[int, np.ndarray]:
    """The groups a quantised run computes and their row counts: all ``len(counts)`` local experts for
    w8a8 (stride-0 shared weights cost nothing); for w4a8 only the experts this step touches (the A8W4
    simulator materialises every group's int4 weight at once), refused with a MemoryError naming the size
    when even that exceeds ``memory_budget`` bytes."""
    counts = np.asarray(counts)
    if quant != "w4a8":
        return len(counts), counts
    groups = int((counts > 0).sum())
    need = groups * (hidden * 2 * inter + inter * hidden) * 1.0      # one int8 copy of the touched experts
    if need > memory_budget:
        raise MemoryError(
            f"--run --quant w4a8 would need about {need / 1e9:.1f} GB: the A8W4 simulator "
            f"materialises the int4 weights of all {groups} touched experts at once; use "
            f"fewer --tokens (budget {memory_budget / 1e9:.1f} GB)")
    return groups, counts[counts > 0]


@dataclass
class QuantExpertWeights:
    """The quantised expert weights of one layer whose ``groups`` experts share one random weight (see
    :func:`run_layer`): the arrays the simulator computes from, the contiguous specs the checker sees,
    the scales and the A8W4 offline terms, plus the per-channel integer values and fp32 scales of the one
    expert (``q13, s13, q2, s2``) a caller can recompute the layer from."""
    q13: np.ndarray
    s13: np.ndarray
    q2: np.ndarray
    s2: np.ndarray
    w13: np.ndarray
    w2: np.ndarray
    w13_spec: TensorSpec
    w2_spec: TensorSpec
    w13_scale: np.ndarray
    w2_scale: np.ndarray
    sq_extra: Dict[str, Any]
    fr_bias: Optional[np.ndarray]


def quant_expert_weights(quant: str, w13_one: np.ndarray, w2_one: np.ndarray, groups: int) -> QuantExpertWeights:
    """``w13_one [H, 2I]`` / ``w2_one [I, H]`` (fp32, one expert) quantised per output channel for
    ``quant`` (``"w8a8"``: int8, NZ-tagged for the checker, fp32 / bf16 scales; ``"w4a8"``: int4, checked as
    packed eight to an int32, int64-encoded scales and the offline ``8 * sum_k W * scale`` terms), shared by
    ``groups`` experts (stride-0 views)."""
    import ml_dtypes

    from .sim.numerics import encode_int64_scale
    H, I2 = w13_one.shape
    I = I2 // 2
    if quant == "w8a8":
        q13, s13 = _quant_per_channel(w13_one, 127)
        q2, s2 = _quant_per_channel(w2_one, 127)
        w13 = np.broadcast_to(q13, (groups, H, 2 * I))
        w2 = np.broadcast_to(q2, (groups, I, H))
        # A8W8 takes NZ weights only; the simulator computes from the logical values
        return QuantExpertWeights(
            q13, s13, q2, s2, w13, w2, _contiguous_spec(w13, "FRACTAL_NZ"), _contiguous_spec(w2, "FRACTAL_NZ"),
            np.ascontiguousarray(np.broadcast_to(s13, (groups, 2 * I))),
            np.ascontiguousarray(np.broadcast_to(s2, (groups, H))).astype(np.dtype(ml_dtypes.bfloat16)),
            {}, None)
    if quant != "w4a8":
        raise ValueError(f"quant must be 'w8a8' or 'w4a8' for quantised expert weights, got {quant!r}")
    q13, s13 = _quant_per_channel(w13_one, 7)
    q2, s2 = _quant_per_channel(w2_one, 7)

    def tile(a: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(a, shape))
    # Checked as deployed (int4 packed eight to an int32, ND); computed from an ml_dtypes int4 view of the
    # same values, which the simulator reads without the 8x-wide unpacking transient (same logical values,
    # so the same arithmetic).
    return QuantExpertWeights(
        q13, s13, q2, s2,
        np.broadcast_to(q13.astype(ml_dtypes.int4), (groups, H, 2 * I)),
        np.broadcast_to(q2.astype(ml_dtypes.int4), (groups, I, H)),
        TensorSpec((groups, H, 2 * I // 8), "int32"), TensorSpec((groups, I, H // 8), "int32"),
        tile(encode_int64_scale(s13), (groups, 2 * I)), tile(encode_int64_scale(s2), (groups, H)),
        # the offline "8 * sum_k W * scale" term of the MSD split (spec 2.4 / 3.3)
        dict(bias=tile((8 * q13.astype(np.float64).sum(0) * s13).astype(np.float32), (groups, 2 * I))),
        tile((8 * q2.astype(np.float64).sum(0) * s2).astype(np.float32), (groups, H)))


def _contiguous_spec(a: np.ndarray, fmt: str = "ND") -> TensorSpec:
    """The checker's view of a shared (stride-0) weight: same shape, dtype and format, contiguous."""
    from .sim.numerics import dtype_name
    return TensorSpec(a.shape, dtype_name(a), fmt)


def _quant_per_channel(w: np.ndarray, qmax: int) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantisation of one expert weight ``[K, N]`` -> (int8 [K, N],
    fp32 scale [N])."""
    scale = (np.maximum(np.abs(w).max(0), np.float32(1e-12)) / np.float32(qmax)).astype(np.float32)
    q = np.clip(np.rint(w / scale), -qmax - 1, qmax).astype(np.int8)
    return q, scale


def run_report(rep: Report, *, seed: int = 0, stream=None) -> Dict[str, Any]:
    """:func:`run_layer` with the stderr progress bar; refuses a plan the checker rejects."""
    if not rep.passed:
        raise RuntimeError("--run needs every call to pass the checker (the simulator enforces the "
                           "same rules); fix the violations above first")
    unsimulated = [s.name for s in rep.checked if s.unsimulated]
    if unsimulated:
        raise RuntimeError(f"--run cannot compute stage(s) {', '.join(unsimulated)}: ascend-moe does not simulate "
                           "them (this is no verdict about the device)")
    prog = Progress(1 + len(rep.stages), stream)  # setup + every stage
    return run_layer(rep, seed=seed, progress=prog)


def summarize_output(result: Dict[str, Any]) -> str:
    y = np.asarray(result["output"]).astype(np.float32)
    finite = np.isfinite(y)
    rms = float(np.sqrt(np.mean(y[finite] ** 2))) if finite.any() else math.nan
    return (f"output   {list(y.shape)} bfloat16, rms {rms:.4g}, non-finite {int((~finite).sum())}; "
            f"total {sum(t for _, t in result['timings']) * 1e3:.1f} ms")
