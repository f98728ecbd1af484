"""Command line: ``python -m ascend_moe info | check | rules``.

* ``info``: environment, CANN, product, and per-op rules and entry points.
* ``check --model <preset | config.json> --product <product> [--cann V] [--quant none|w8a8|w4a8]
  [--tokens N] [--ep N] [--run]``: one MoE layer's op calls on a product, every rule checked
  (exit status 0 only if every call passes); ``--run`` executes the layer through the simulator, with
  ``--ep N`` on N processes (torch.multiprocessing, gloo; or one rank per process under torchrun).
* ``rules [--product P] [--op O] [--cann V] [--markdown | --matrix]``: the rule table, generated
  from the declarations: per rule its kind (host: the host code rejects it with the aclnn status shown;
  wrapper: op-plugin / MindSpeed refuses it; kernel: accepted but undefined; doc: docs only, a warning;
  sim: not simulated by ascend-moe) and its source (file and function, release tag where it changed).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import platform
import sys
from typing import Any, Dict, List, Optional

from . import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    from .backends import aclnn_status, requested_backend
    from .products import PRODUCTS, resolve_target
    from .rules import OP_MODULES, get_op

    print(f"ascend-moe {__version__}  (Python {platform.python_version()}, {platform.machine()})")
    try:
        import torch
        print(f"torch      {torch.__version__}")
    except ImportError:
        print("torch      not installed (the simulator and the checker still work)")
    spec = importlib.util.find_spec("torch_npu")
    print(f"torch_npu  {'installed at ' + str(spec.origin) if spec else 'not installed'}"
          + ("" if spec else " (CPU drop-in for tests: ascend_moe.compat.install() or -p ascend_moe.pytest_plugin)"))
    report = aclnn_status.loader_report()
    if report.get("ok"):
        print("CANN       found" + (" (fake test runtime)" if report.get("fake_runtime") else ""))
    else:
        print(f"CANN       not usable: {report.get('reason')}")
    for lib in report.get("libraries", []):
        state = f"loaded from {lib['path']}" if lib.get("loaded") else f"not loaded: {lib.get('error')}"
        print(f"  {lib['name']:<28} {state}")
    try:
        t = resolve_target(args.product, args.cann)
    except ValueError as e:  # an unknown product or a malformed CANN version
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"product    {t.product} ({PRODUCTS[t.product].name})  [from {t.product_source}]")
    print(f"CANN rules {t.cann}  [from {t.cann_source}]")
    print(f"backend    {requested_backend()} (CPU tensors -> simulator, NPU tensors -> aclnn)")
    print()
    print(f"{'op':<38} {'rules':>5}  aclnn entry points")
    for name in OP_MODULES:
        op = get_op(name)
        # per call family: the entry point that would be used, or the preference order when none resolves
        plan = aclnn_status.entry_point_plan(name)
        ep_text = "; ".join(
            f"{fam}: {chosen}" if chosen else f"{fam}: none of {' > '.join(n for n, _ in cands)}"
            for fam, chosen, cands in plan) or "-"
        print(f"{name:<38} {len(op.rules):>5}  {ep_text}")
    return 0


def _cmd_rules(args: argparse.Namespace) -> int:
    from .products import CannVersion, normalize_product
    from .rules import OP_MODULES
    if args.matrix:
        return _print_matrix(args)
    try:
        prod = normalize_product(args.product) if args.product else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.op and args.op not in OP_MODULES:
        print(f"error: unknown op {args.op!r}; known ops: {', '.join(OP_MODULES)}", file=sys.stderr)
        return 2
    rows = []
    for spec in _loaded_ops(args.op):
        if prod and prod not in spec.products:
            continue
        rows += [r for r in spec.rules if not prod or r.products is None or prod in r.products]
    if args.cann:
        try:
            cann = CannVersion(args.cann)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        from .products import warn_if_unknown
        warn_if_unknown(cann)
        rows = [r for r in rows if (r.since is None or not cann < r.since)
                and (r.until is None or cann < r.until)]
    if args.markdown:
        print("| rule | op | argument | products | CANN | kind | severity | status | rule text | source |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r.id}` | {r.op} | {r.argument} | {r.products_text()} | {r.version_range()} | {r.kind} | "
                  f"{r.severity} | {r.status or '-'} | {r.summary.replace('|', '/')} | {r.source.replace('|', '/')} |")
    else:
        for r in rows:
            sev = "" if r.severity == "error" else f" [{r.severity}]"
            status = f" -> aclnn {r.status}" if r.status is not None else ""
            print(f"{r.id:<48} {r.op:<36} {r.argument:<20} {r.products_text():<28} {r.version_range():<28} "
                  f"{r.kind:<8} {r.summary}{sev}{status}")
            print(f"{'':<48} source: {r.source}")
    print(f"{len(rows)} rules" if not args.markdown else f"\n{len(rows)} rules")
    return 0


def _loaded_ops(only: Optional[str] = None) -> list:
    """The OpSpecs of every op (or of ``only``); an op whose rule module is not available in this
    build is named on stderr and skipped, so the table shows what is there."""
    from .rules import OP_MODULES, get_op
    specs = []
    for name in OP_MODULES:
        if only and name != only:
            continue
        try:
            specs.append(get_op(name))
        except Exception as e:  # a rule module that failed to import or register
            print(f"note: {name}: rules not available ({type(e).__name__}: {e})", file=sys.stderr)
    return specs


def _print_matrix(args: argparse.Namespace) -> int:
    """Op x product support matrix (the README's table), from each op's declared products."""
    from .products import PRODUCTS
    prods = list(PRODUCTS)
    ops = _loaded_ops(args.op)
    if not ops:
        print(f"error: no op rules available{f' for {args.op!r}' if args.op else ''}", file=sys.stderr)
        return 2
    if args.markdown:
        print("| op | " + " | ".join(prods) + " | rules |")
        print("|---|" + "---|" * len(prods) + "---|")
        for o in ops:
            cells = ["yes" if p in o.products else "-" for p in prods]
            print(f"| {o.name} | " + " | ".join(cells) + f" | {len(o.rules)} |")
    else:
        w = max(len(o.name) for o in ops)
        print(f"{'op':<{w}}  " + "  ".join(f"{p:<17}" for p in prods) + "  rules")
        for o in ops:
            print(f"{o.name:<{w}}  " + "  ".join(f"{('yes' if p in o.products else '-'):<17}" for p in prods)
                  + f"  {len(o.rules)}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from . import ep_layer
    if args.run and ep_layer.under_torchrun():
        # one process per rank: the report and the per-rank table are printed by rank 0 only
        if args.ep != ep_layer.torchrun_world():
            print(f"error: --ep {args.ep} but torchrun started {ep_layer.torchrun_world()} processes; pass "
                  f"--ep {ep_layer.torchrun_world()} (one process per EP rank)", file=sys.stderr)
            return 2
        if os.environ.get("RANK") != "0":
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                return _check(args)
    return _check(args)


def _run_ep(args: argparse.Namespace, rep: Any) -> Optional[List[Dict[str, Any]]]:
    """``--ep N --run``: the EP layer on N processes (spawned here, or this torchrun launch); the ranks'
    results (None on a torchrun rank other than 0)."""
    from . import ep_layer
    kwargs = dict(model=args.model, tokens=args.tokens, product=rep.target.product, cann=str(rep.target.cann),
                  seed=args.seed, host_renorm=args.host_renorm, quant=args.quant)
    if ep_layer.under_torchrun():
        return ep_layer.run_torchrun(**kwargs)
    return ep_layer.launch_local(ep=args.ep, **kwargs)


def _check(args: argparse.Namespace) -> int:
    from . import model_check as mc
    from .products import UnknownProductError
    if args.list_presets:
        for name, title in mc.list_presets().items():
            print(f"{name:<22} {title}")
        return 0
    try:
        rep = mc.check_model(args.model, args.product, args.cann, quant=args.quant, tokens=args.tokens,
                             ep=args.ep, router_dtype=args.router_dtype, host_renorm=args.host_renorm)
    except (mc.ModelConfigError, UnknownProductError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ep_run = args.run and args.ep > 1
    if args.json:
        import json
        if ep_run:
            data = mc.report_dict(rep)
            if rep.passed:
                try:
                    data["ranks"] = _run_ep(args, rep)
                except MemoryError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 2
            print(json.dumps(data, indent=2))
            return 0 if rep.passed else 1
        if args.run and rep.passed:
            try:
                mc.run_report(rep, seed=args.seed)
            except MemoryError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        print(json.dumps(mc.report_dict(rep), indent=2))
        return 0 if rep.passed else 1
    print(mc.format_report(rep))
    if not rep.passed and any(v.argument == "renorm" for s in rep.stages for v in s.errors):
        print("hint     --host-renorm passes renorm=0 and renormalises the top-k weights on the host "
              "(what vllm-ascend does for softmax routers)")
    if args.run:
        if not rep.passed:
            print("run      skipped: the simulator enforces the same rules, so a layer the checker "
                  "rejects cannot run", file=sys.stderr)
            return 1
        if ep_run:
            print(f"\nrunning the EP layer on {args.ep} processes (gloo; {rep.dims.tokens} tokens per rank, random "
                  "weights shared by all experts; see ascend_moe.ep_layer)", file=sys.stderr)
            try:
                results = _run_ep(args, rep)
            except MemoryError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            if results is not None:
                from .ep_layer import format_ranks
                print()
                print(format_ranks(results))
            return 0
        print(f"\nrunning the layer through the simulator ({rep.dims.tokens} tokens, random weights; "
              "all experts share one weight, see ascend_moe.model_check.run_layer)", file=sys.stderr)
        try:
            result = mc.run_report(rep, seed=args.seed)
        except MemoryError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print()
        print("time per stage (simulator, this machine)")
        for s in rep.stages:
            if s.seconds is not None:
                print(f"  {s.name:<22} {(s.op or '-'):<38} {s.seconds * 1e3:10.1f} ms")
        print(mc.summarize_output(result))
    return 0 if rep.passed else 1


def _cmd_run(args: argparse.Namespace) -> int:
    """Run SCRIPT as ``python SCRIPT ARGS`` would, with the simulated npu device and the drop-ins."""
    import runpy
    from .simulation import RealNpuPresent, constraint_error_in, simulate
    try:
        simulate(product=args.product, cann=args.cann, devices=args.devices)
    except RealNpuPresent as e:
        print(f"ascend-moe run: {e}. Nothing was run.", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"ascend-moe run: {e}", file=sys.stderr)
        return 2
    script = os.path.abspath(args.script)
    if not os.path.exists(script):
        print(f"ascend-moe run: no such script: {args.script}", file=sys.stderr)
        return 2
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [args.script, *args.args]
    sys.path.insert(0, os.path.dirname(script))
    try:
        try:
            runpy.run_path(script, run_name="__main__")
        except Exception as e:
            found = constraint_error_in(e)
            if found is None or found is e:
                raise
            print(f"ascend-moe run: torch.compile stopped on a constraint violation while tracing "
                  f"({type(e).__name__}); the violation:", file=sys.stderr)
            raise found from None
    except SystemExit as e:  # the script's own exit status
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


_PRODUCT_HELP = ("Atlas product or SoC name, e.g. atlas-a2, atlas-a3, Ascend910B3 (default: ASCEND_MOE_PRODUCT, "
                 "detection, then atlas-a2)")
_CANN_HELP = "CANN version whose rules apply, e.g. 8.2.RC1 (default: ASCEND_MOE_CANN, detection, then 8.5.0)"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ascend_moe", description="ascend-moe: Ascend MoE operators with a constraint checker "
        "and a bit-faithful simulator. Run 'python -m ascend_moe <command> --help' for each command.",
        epilog="exit status: 0 success (check: every op call passes), 1 check found violations, 2 bad argument")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,info,check,rules}")
    run_text = ("run an unmodified torch_npu script on the simulated npu device (torch_npu, MindSpeed gmm and "
                "TorchAir drop-ins active)")
    p = sub.add_parser("run", help=run_text, description=run_text + ". A real torch_npu present: nothing is run.")
    p.add_argument("--product", default=None, help="Atlas product simulated (its rules and SoC name; "
                                                   "default: ASCEND_MOE_PRODUCT, then atlas-a2)")
    p.add_argument("--cann", default=None, help="CANN version whose rules apply (default: ASCEND_MOE_CANN, "
                                                "then 8.5.0)")
    p.add_argument("--devices", type=int, default=None, help="number of simulated npu devices (default 8)")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    p.set_defaults(func=_cmd_run)
    info_text = ("show torch / torch_npu / CANN (which library or symbol is missing), the product and CANN "
                 "version in effect and where each came from, and per op its rule count and aclnn entry point")
    p = sub.add_parser("info", help=info_text, description=info_text)
    p.add_argument("--product", help=_PRODUCT_HELP)
    p.add_argument("--cann", help=_CANN_HELP)
    p.set_defaults(func=_cmd_info)
    check_text = ("check one MoE layer of a model config on a product (exit 0 only if every op call passes, 1 if "
                  "any fails, 2 for a bad argument); --run executes it through the simulator")
    p = sub.add_parser("check", help=check_text, description=check_text + ". Nothing is allocated without --run.")
    p.add_argument("--model", default="deepseek-v3",
                   help="a preset (see --list-presets; default deepseek-v3) or a path to a Hugging Face "
                        "config.json (or its directory)")
    p.add_argument("--product", default=None, help=_PRODUCT_HELP)
    p.add_argument("--cann", default=None, help=_CANN_HELP)
    p.add_argument("--quant", choices=("none", "w8a8", "w4a8"), default="none",
                   help="expert weights: bf16 (none), int8 (w8a8), int4 (w4a8)")
    p.add_argument("--tokens", type=int, default=4,
                   help="tokens in the step, 1 to 2**31-1 (default 4: small, so --run on DeepSeek-V3 takes seconds)")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel degree: each device holds "
                                                     "experts/ep experts (default 1)")
    p.add_argument("--router-dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="dtype of the router logits and the score-correction bias (default bfloat16)")
    p.add_argument("--host-renorm", action="store_true",
                   help="softmax routers with norm_topk_prob: pass renorm=0 and renormalise on the host")
    p.add_argument("--run", action="store_true",
                   help="also execute the layer through the simulator on random weights (refused, exit 2, when "
                        "the step would need more than 4 GB)")
    p.add_argument("--seed", type=int, default=0, help="random seed for --run (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    p.set_defaults(func=_cmd_check)
    rules_text = "print the rule table (or the op x product support matrix), generated from the declarations"
    p = sub.add_parser("rules", help=rules_text, description=rules_text)
    p.add_argument("--product", help="only the rules that apply on this product (name or SoC alias)")
    p.add_argument("--op", help="only the rules of this op, e.g. npu_grouped_matmul")
    p.add_argument("--cann", help="only the rules that hold at this CANN version")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--matrix", action="store_true", help="op x product support matrix instead")
    p.set_defaults(func=_cmd_rules)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
