"""Command line: ``python -m ascend_moe info | rules``."""
from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
from typing import List, Optional

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
    print(f"torch_npu  {'installed at ' + str(spec.origin) if spec else 'not installed'}")
    report = aclnn_status.loader_report()
    if report.get("ok"):
        print("CANN       found" + (" (fake test runtime)" if report.get("fake_runtime") else ""))
    else:
        print(f"CANN       not usable: {report.get('reason')}")
    for lib in report.get("libraries", []):
        state = f"loaded from {lib['path']}" if lib.get("loaded") else f"not loaded: {lib.get('error')}"
        print(f"  {lib['name']:<28} {state}")
    t = resolve_target(args.product, args.cann)
    print(f"product    {t.product} ({PRODUCTS[t.product].name})  [from {t.product_source}]")
    print(f"CANN rules {t.cann}  [from {t.cann_source}]")
    print(f"backend    {requested_backend()} (CPU tensors -> simulator, NPU tensors -> aclnn)")
    print()
    print(f"{'op':<38} {'rules':>5}  aclnn entry points")
    for name in OP_MODULES:
        op = get_op(name)
        eps = aclnn_status.entry_points(name)
        ep_text = ", ".join(f"{n}{'' if ok else ' (missing)'}" for n, ok, _ in eps) or "-"
        print(f"{name:<38} {len(op.rules):>5}  {ep_text}")
    return 0


def _cmd_rules(args: argparse.Namespace) -> int:
    from .rules import rule_table
    rows = rule_table(args.product, args.op)
    for r in rows:
        print(f"{r.id:<48} {r.op:<36} {r.argument:<20} {r.products_text():<28} {r.version_range():<28} {r.summary}")
    print(f"{len(rows)} rules")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ascend_moe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="environment, CANN, product, and per-op rules and entry points")
    p.add_argument("--product")
    p.add_argument("--cann")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("rules", help="the rule table, generated from the declarations")
    p.add_argument("--product")
    p.add_argument("--op")
    p.set_defaults(func=_cmd_rules)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
