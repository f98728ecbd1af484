"""Property test: hostile calls of every public op, its torch op, its NumPy twin, ``check()`` and the CLI.

Driven by the valid samples of fuzz_samples.py and the mutations of fuzz_mutations.py.  For every call:

1. it returns a result or raises ConstraintError, NotSimulatedError, TypeError or ValueError whose message names an
   argument of the op (a ConstraintError names one in each violation) - never another exception;
2. with finite inputs and moderate scalars, no result holds NaN/inf (calls run under the ``zero``
   undefined-region policy, so documented undefined regions are zero, not NaN);
3. results are equal on contiguous and non-contiguous inputs (or the non-contiguous call is refused
   by a rule), the twin's results equal the op's, and ``check()`` reports an error exactly when the op
   raises ConstraintError;
4. the CLI (in a subprocess) exits 0, 1 or 2 on any config, never with a traceback.

Bounded for CI (a few seconds per op).  ``ASCEND_MOE_FUZZ_EXAMPLES=N`` runs N examples per op (and
randomised instead of the fixed derandomised sequence), e.g. ``ASCEND_MOE_FUZZ_EXAMPLES=2000``.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import warnings
from typing import Any, List, Tuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ascend_moe
from ascend_moe.opdecl import get_decl
from ascend_moe import ConstraintError, ConstraintWarning, NotSimulatedError, sim
from ascend_moe.formats import get_format, set_format
from ascend_moe.ops._common import to_numpy

import fuzz_mutations as fm
import fuzz_samples as fs

LONG = int(os.environ.get("ASCEND_MOE_FUZZ_EXAMPLES", "0") or 0)
EXAMPLES = LONG or 12
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
                         suppress_health_check=list(HealthCheck))

def twin(op: str):
    """The op's checked NumPy twin, generated from its declaration (ascend_moe.numpy_ops)."""
    from ascend_moe import numpy_ops
    return getattr(numpy_ops, op)


GMM_FAMILY = ("npu_gmm", "npu_gmm_v2", "npu_grouped_matmul")
# NotSimulatedError: an honest "the simulator does not model this form", never a device verdict
ALLOWED = (ConstraintError, NotSimulatedError, TypeError, ValueError)
# Work that lands separately, named so that nothing else slips through:
# * the type-checking binder of the public functions: torch's schema takes a bool for an int and
#   (custom ops) converts some mistyped scalars, so the op may compute where check() rejects the type;
# * the rule engine's own input validation: check() (and only check()) may still report a rule that
#   crashed on a non-numeric scalar as "internal error: rule ...".
PENDING_BINDER = False
PENDING_RULE_ENGINE = re.compile(r"^internal error: rule \S+ of \w+ failed on a call no other rule rejects")
# torch's own schema parser and dispatcher (the torch.ops.ascend_moe.* surface) raise RuntimeError /
# NotImplementedError for a mistyped, extra or missing argument; the public functions raise TypeError.
TORCH_SCHEMA_ERROR = re.compile(r"Expected a value of type .* for argument '(\w+)'"
                                r"|Unknown keyword argument '(\w+)' for operator"
                                r"|expected at most \d+ argument\(s\) but received \d+ argument\(s\)"
                                # torch's dispatcher, when the only tensor argument is None
                                r"|There were no tensor arguments to this function")


def param_names(op: str) -> List[str]:
    return [p for p in inspect.signature(getattr(ascend_moe, op)).parameters if p != "backend"]


def names_an_argument(err: BaseException, names: List[str]) -> bool:
    if isinstance(err, (ConstraintError, NotSimulatedError)):
        return bool(err.violations) and all(v.argument for v in err.violations)
    msg = str(err)
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", msg) for n in names)


def outcome(fn, names: List[str], what: str, torch_surface: bool = False, check_surface: bool = False,
            mistyped_scalar: bool = False) -> Tuple[str, Any]:
    """("ok", result) or ("error", exception); any other exception fails the property."""
    try:
        return "ok", fn()
    except ALLOWED as e:
        assert names_an_argument(e, names), f"{what}: {type(e).__name__} names no argument: {e}"
        return "error", e
    except RuntimeError as e:
        m = TORCH_SCHEMA_ERROR.search(str(e))
        if torch_surface and m:
            return "error", e
        if check_surface and mistyped_scalar and PENDING_RULE_ENGINE.search(str(e)):
            return "error", e
        raise AssertionError(f"{what}: RuntimeError, not ConstraintError/TypeError/ValueError: {e}") from e


def flat_arrays(result: Any) -> List[np.ndarray]:
    if isinstance(result, torch.Tensor):
        return [to_numpy(result).astype(np.float64) if result.dtype.is_floating_point else to_numpy(result)]
    if isinstance(result, np.ndarray):
        return [result.astype(np.float64) if result.dtype.kind == "f" or "bfloat16" in str(result.dtype)
                else result]
    out: List[np.ndarray] = []
    for r in result:
        out += flat_arrays(r)
    return out


def assert_same(a: Any, b: Any, what: str) -> None:
    fa, fb = flat_arrays(a), flat_arrays(b)
    assert len(fa) == len(fb), what
    for x, y in zip(fa, fb):
        assert x.shape == y.shape, f"{what}: shapes {x.shape} vs {y.shape}"
        np.testing.assert_array_equal(x, y, err_msg=what)


def assert_finite(result: Any, what: str) -> None:
    for a in flat_arrays(result):
        if a.dtype.kind == "f":
            assert np.isfinite(a).all(), f"{what}: NaN/inf in a result of finite inputs"


def to_twin(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        a = to_numpy(v)
        if get_format(v).startswith("FRACTAL_NZ"):
            set_format(a, "FRACTAL_NZ")
        return a
    if isinstance(v, list):
        return [to_twin(i) for i in v]
    return v


def torch_op_kwargs(op: str, kwargs: dict) -> dict:
    """torch.ops spelling: an int[] overload's argument travels as ``<name>_ints`` (opdecl overloads)."""
    from ascend_moe.opdecl import get_decl
    kw = dict(kwargs)
    for name, (_, carrier) in get_decl(op).alternatives.items():
        if isinstance(kw.get(name), (list, tuple)) and all(isinstance(i, int) for i in kw[name]):
            kw[carrier] = kw.pop(name)
    return kw


def _copied(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, (list, tuple)):
        return type(v)(_copied(i) for i in v)
    return v


def fresh(s: fs.Sample) -> Tuple[tuple, dict]:
    """The sample's arguments; copies of its tensors for an op that writes into an argument, so every
    surface starts from the same values."""
    if not get_decl(s.op).mutates:
        return s.args, s.kwargs
    return tuple(_copied(a) for a in s.args), {k: _copied(v) for k, v in s.kwargs.items()}


def torch_op_result(op: str, args: tuple, kwargs: dict) -> Any:
    """torch.ops.ascend_moe.<op>'s result; for an op that returns the argument it wrote (the torch op returns
    nothing), that argument."""
    d = get_decl(op)
    result = getattr(torch.ops.ascend_moe, op)(*args, **torch_op_kwargs(op, kwargs))
    if d.returns_written is None:
        return result
    order = [a.name for a in d.public_order()]
    i = order.index(d.returns_written)
    return kwargs[d.returns_written] if d.returns_written in kwargs else args[i]


def run_surfaces(s: fs.Sample, names: List[str], finite: bool, what: str,
                 mistyped_scalar: bool = False) -> Tuple[str, Any]:
    public = getattr(ascend_moe, s.op)
    args, kwargs = fresh(s)
    status, result = outcome(lambda: public(*args, **kwargs), names, f"{what}: ascend_moe.{s.op}",
                             torch_surface=True)
    targs, tkwargs = fresh(s)
    tstatus, tresult = outcome(lambda: torch_op_result(s.op, targs, tkwargs),
                               names + [c for _, c in get_decl(s.op).alternatives.values()], f"{what}: torch.ops.ascend_moe.{s.op}", torch_surface=True)
    wargs, wkwargs = fresh(s)
    twin_args, twin_kwargs = [to_twin(a) for a in wargs], {k: to_twin(v) for k, v in wkwargs.items()}
    wstatus, wresult = outcome(lambda: twin(s.op)(*twin_args, **twin_kwargs), names, f"{what}: sim twin {s.op}")
    cstatus, violations = outcome(lambda: ascend_moe.check(s.op, *s.args, **s.kwargs), names,
                                  f"{what}: check({s.op})", check_surface=True, mistyped_scalar=mistyped_scalar)
    if status == "ok":
        if finite:
            assert_finite(result, f"{what}: ascend_moe.{s.op}")
        if tstatus == "ok":
            assert_same(result, tresult, f"{what}: torch op vs public")
        if wstatus == "ok":
            assert_same(result, wresult, f"{what}: twin vs public")
        if cstatus == "ok" and not (PENDING_BINDER and mistyped_scalar):
            errors = [v for v in violations if v.severity == "error"]
            assert not errors, f"{what}: the call computed but check() reports {errors}"
    if isinstance(result, ConstraintError) and cstatus == "ok":
        assert any(v.severity == "error" for v in violations), f"{what}: ConstraintError but check() finds nothing"
    return status, result


def _op_params():
    return [pytest.param(op, id=op) for op in fs.fuzzed_ops()]


@pytest.mark.parametrize("op", _op_params())
@FUZZ_SETTINGS
@given(data=st.data())
def test_hostile_calls(op, data):
    names = param_names(op)
    seed = data.draw(st.integers(0, 3), label="seed")
    samples = fs.samples(op, seed)
    base = data.draw(st.sampled_from(samples), label="sample")
    m = fm.mutate(base, data.draw, names)
    what = f"{op} [{base.name}] mutation: {m.what}"
    with warnings.catch_warnings(), ascend_moe.undefined_policy("zero"):
        warnings.simplefilter("ignore", ConstraintWarning)
        status, result = run_surfaces(m.sample, names + list(m.extra_names), m.finite, what, m.mistyped_scalar)
        if status != "ok":
            return
        # the same call with non-contiguous copies of the inputs
        slots = [sl for sl in fm.tensor_slots(m.sample) if fm.noncontiguous(fm._get(m.sample, sl)) is not None]
        if not slots:
            return
        nc = m.sample
        for sl in slots:
            nc = fm._set(nc, sl, fm.noncontiguous(fm._get(nc, sl)))
        # (nc's tensors are new copies, used once: an op that writes into one needs no fresh copy)
        status2, result2 = outcome(lambda: getattr(ascend_moe, op)(*nc.args, **nc.kwargs), names,
                                   f"{what}: non-contiguous")
        if status2 == "ok":
            assert_same(result, result2, f"{what}: contiguous vs non-contiguous inputs")
        else:
            assert isinstance(result2, (ConstraintError, NotSimulatedError)), \
                f"{what}: non-contiguous inputs: {result2!r}"


# --- the CLI, in a subprocess ---------------------------------------------------------------------

_DRIVER = r"""
import contextlib, io, json, sys, traceback
from ascend_moe.cli import main
report = []
for path, extra in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(["check", "--model", path] + extra)
    except SystemExit as e:
        rc = e.code
    except BaseException:
        rc, err = "traceback", io.StringIO(traceback.format_exc())
    report.append([rc, err.getvalue()[-2000:]])
print(json.dumps(report))
"""

CONFIG_FIELDS = ("n_routed_experts", "num_experts_per_tok", "hidden_size", "moe_intermediate_size", "n_group",
                 "topk_group", "routed_scaling_factor", "n_shared_experts", "scoring_func", "norm_topk_prob",
                 "text_config", "hidden_act")
HOSTILE_JSON = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                         st.text(max_size=5), st.lists(st.integers(), max_size=3),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
CLI_BASE = {"n_routed_experts": 16, "num_experts_per_tok": 4, "hidden_size": 64, "moe_intermediate_size": 32,
            "n_group": 4, "topk_group": 2, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
            "routed_scaling_factor": 2.5, "n_shared_experts": 1}


@settings(max_examples=1 if not LONG else max(2, LONG // 100), deadline=None, derandomize=not LONG, database=None,
          suppress_health_check=list(HealthCheck))
@given(configs=st.lists(st.tuples(st.sampled_from(CONFIG_FIELDS), HOSTILE_JSON,
                                  st.sampled_from([[], ["--run"], ["--quant", "w8a8"], ["--tokens", "0"],
                                                   ["--ep", "3"], ["--json"]])),
                        min_size=8, max_size=8))
def test_cli_never_tracebacks(tmp_path_factory, configs):
    d = tmp_path_factory.mktemp("cli")
    jobs = []
    for i, (field, value, extra) in enumerate(configs):
        cfg = dict(CLI_BASE, **{field: value})
        path = d / f"config{i}.json"
        path.write_text(json.dumps(cfg))   # NaN/Infinity are written as JSON's extension literals
        jobs.append([str(path), extra])
    jobs.append([str(d / "missing.json"), []])
    r = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(jobs), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for (path, extra), (rc, err) in zip(jobs, json.loads(r.stdout)):
        cfg = json.loads(open(path).read()) if os.path.exists(path) else None
        assert rc in (0, 1, 2), f"{cfg} {extra}: {rc}\n{err}"
        if rc == 2:
            assert "error" in err, f"{cfg} {extra}: exit 2 without a message"
