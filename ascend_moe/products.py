"""Atlas products, CANN versions, and which (product, version) a call is checked against.

Selection precedence, first that gives a value wins:

1. the ``product=`` / ``cann=`` argument of the call (``ascend_moe.check``, the CLI flags);
2. :func:`set_target` / ``with target(...)`` in this process (what the pytest plugin uses);
3. the environment variables ``ASCEND_MOE_PRODUCT`` and ``ASCEND_MOE_CANN``;
4. detection, when CANN is installed: the SoC name from ``aclrtGetSocName`` and the toolkit version
   from ``ascend_toolkit_install.info`` / ``version.cfg``;
5. the defaults :data:`DEFAULT_PRODUCT` (``atlas-a2``) and :data:`DEFAULT_CANN`.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import glob
import os
import re
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple, Union

# --------------------------------------------------------------------------------------------
# products
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    key: str          # canonical id used in rules, e.g. "atlas-a2"
    name: str         # the family name the Ascend docs use
    soc_patterns: Tuple[str, ...]  # regexes on aclrtGetSocName() output
    aliases: Tuple[str, ...] = ()


PRODUCTS: Dict[str, Product] = {p.key: p for p in (
    Product("atlas-a2", "Atlas A2 training series / Atlas 800I A2 inference / A200I A2 Box",
            (r"Ascend910B\d.*",), ("a2", "910b", "atlas-a2-training", "atlas-800i-a2")),
    Product("atlas-a3", "Atlas A3 training series / Atlas A3 inference series",
            (r"Ascend910_93\d*.*",), ("a3", "910_93", "910c", "atlas-a3-training")),
    Product("atlas-200i-500-a2", "Atlas 200I/500 A2 inference products",
            (r"Ascend310B.*",), ("200i-a2", "500-a2", "310b")),
    Product("atlas-inference", "Atlas inference series (Ascend 310P)",
            (r"Ascend310P.*",), ("310p", "inference")),
    Product("atlas-training", "Atlas training series (Ascend 910)",
            (r"Ascend910A.*", r"Ascend910ProA.*", r"Ascend910ProB.*", r"Ascend910PremiumA.*"),
            ("910", "910a", "training")),
    Product("ascend-950", "Ascend 950PR / 950DT",
            (r"Ascend950.*",), ("950", "950pr", "950dt")),
)}

A2_A3 = frozenset({"atlas-a2", "atlas-a3"})
DEFAULT_PRODUCT = "atlas-a2"


class UnknownProductError(ValueError):
    pass


def product_from_soc(soc: str) -> Optional[str]:
    """Map an SoC name (``Ascend910B3``, ``Ascend910_9391``, ``Ascend310P3`` ...) to a product key."""
    for p in PRODUCTS.values():
        if any(re.fullmatch(pat, soc.strip(), flags=re.IGNORECASE) for pat in p.soc_patterns):
            return p.key
    return None


def normalize_product(name: Union[str, Product]) -> str:
    """Canonical product key from a key, an alias or an SoC name; raises naming the choices."""
    if isinstance(name, Product):
        return name.key
    s = str(name).strip()
    low = s.lower().replace("_", "-").replace(" ", "-")
    for p in PRODUCTS.values():
        if low == p.key or low in p.aliases or low == "atlas-" + p.key.split("atlas-")[-1]:
            return p.key
    soc = product_from_soc(s)
    if soc:
        return soc
    raise UnknownProductError(
        f"unknown Atlas product {s!r}; use one of {sorted(PRODUCTS)} or an SoC name such as "
        "Ascend910B3, Ascend910_9391, Ascend310P3, Ascend310B1, Ascend910A, Ascend950PR")


# --------------------------------------------------------------------------------------------
# CANN versions
# --------------------------------------------------------------------------------------------

_VERSION_RE = re.compile(
    r"^\s*(\d+)\.(\d+)(?:\.(?:(RC)(\d+)|(\d+)))?(?:[.\-_]?(alpha|beta|T)(\d*))?\s*$", re.IGNORECASE)


@functools.total_ordering
class CannVersion:
    """A CANN release: ``8.0.RC3 < 8.0.0 < 8.3.RC1 < 8.5.0``.

    Within one ``major.minor`` the release candidates come before the final release; ``alpha``,
    ``beta`` and ``T`` builds (``8.5.0alpha002``) come before the release they name.  A bare
    ``8.5`` means ``8.5.0``.
    """

    __slots__ = ("text", "_key")

    def __init__(self, text: Union[str, "CannVersion"]):
        if isinstance(text, CannVersion):
            self.text, self._key = text.text, text._key
            return
        m = _VERSION_RE.match(str(text))
        if not m:
            raise ValueError(f"not a CANN version: {text!r} (expected e.g. 8.0.RC3, 8.0.0, 8.5.0alpha002)")
        major, minor, rc, rcn, patch, pre, pren = m.groups()
        if rc:
            release = (-1, int(rcn))
        else:
            release = (int(patch or 0), 0)
        prekey = (2, 0) if not pre else ({"alpha": 0, "beta": 1, "t": -1}[pre.lower()], int(pren or 0))
        self.text = str(text).strip()
        self._key = (int(major), int(minor), release, prekey)

    def __eq__(self, other) -> bool:
        return self._key == CannVersion(other)._key

    def __lt__(self, other) -> bool:
        return self._key < CannVersion(other)._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"CannVersion({self.text!r})"

    def __str__(self) -> str:
        return self.text


# The CANN releases the rules know, oldest first.  torch_npu 7.0.0 / 7.1.0 / 7.2.0 pair with CANN
# 8.1.RC1 / 8.2.RC1 / 8.3.RC1.  From 8.5.0 on, the releases are the ops-transformer / ops-nn tags: v8.5.0
# (2026-01-22), v9.0.0 (2026-04-27), v9.0.1 (2026-06-23) and the next one, named v9.1.0.pre in the sources.
# Every versioned rule states the tag where its behaviour first appears.
KNOWN_RELEASES = tuple(CannVersion(v) for v in (
    "8.0.RC1", "8.0.RC2", "8.0.RC3", "8.0.0", "8.1.RC1", "8.2.RC1", "8.3.RC1", "8.5.0", "9.0.0", "9.0.1",
    "9.1.0"))
LATEST_KNOWN = KNOWN_RELEASES[-1]
_KNOWN_KEYS = frozenset(r._key for r in KNOWN_RELEASES)  # membership without a comparison per release


class UnknownCannVersionWarning(UserWarning):
    """A CANN version outside :data:`KNOWN_RELEASES`: the rules treat it as the named known release."""


def known_release_for(version: "CannVersion") -> "CannVersion":
    """The known release whose rules apply to ``version``: itself when known, else the newest known
    release not newer than it (the oldest known one for versions before every known release)."""
    older = [r for r in KNOWN_RELEASES if not version < r]
    return older[-1] if older else KNOWN_RELEASES[0]


def warn_if_unknown(version: "CannVersion", stacklevel: int = 3) -> None:
    """Warn once per version that is not a known release, naming the release it is treated as."""
    if version._key in _KNOWN_KEYS or version.text in _warned_versions:
        return
    _warned_versions.add(version.text)
    as_release = known_release_for(version)
    if LATEST_KNOWN < version:
        why = f"newer than the latest release ascend-moe knows ({LATEST_KNOWN})"
    else:
        why = "not a release ascend-moe knows"
    warnings.warn(f"CANN {version} is {why}; its rules are checked as CANN {as_release}. Known releases: "
                  f"{', '.join(str(r) for r in KNOWN_RELEASES)}", UnknownCannVersionWarning, stacklevel=stacklevel)


_warned_versions: set = set()
DEFAULT_CANN = CannVersion("8.5.0")


# --------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The product and CANN version a call is checked for, and where each came from."""
    product: str
    cann: CannVersion
    product_source: str = "default"
    cann_source: str = "default"

    def __str__(self) -> str:
        return f"{self.product} / CANN {self.cann}"


_context_target: contextvars.ContextVar[Tuple[Optional[str], Optional[CannVersion]]] = \
    contextvars.ContextVar("ascend_moe_target", default=(None, None))
_process_target: Tuple[Optional[str], Optional[CannVersion]] = (None, None)


def set_target(product: Optional[str] = None, cann: Optional[str] = None) -> None:
    """Set the product / CANN version for this process (None clears that part)."""
    global _process_target
    _process_target = (normalize_product(product) if product else None,
                       CannVersion(cann) if cann else None)


@contextlib.contextmanager
def target(product: Optional[str] = None, cann: Optional[str] = None) -> Iterator[Target]:
    """Context manager: check the calls inside it against ``product`` / ``cann``.

    Scope: the choice lives in a ``contextvars`` context, so it holds in this thread and in asyncio
    tasks started inside the block, but **not** in threads of a ``ThreadPoolExecutor`` (their workers
    run in their own context).  To carry it there, submit ``contextvars.copy_context().run``:
    ``pool.submit(contextvars.copy_context().run, fn, *args)``; or use the process-wide ``set_target``."""
    token = _context_target.set((normalize_product(product) if product else None,
                                 CannVersion(cann) if cann else None))
    try:
        yield resolve_target()
    finally:
        _context_target.reset(token)


def _cann_roots() -> list:
    roots = [os.environ.get(v) for v in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ASCEND_PATH")]
    roots += ["/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann",
              os.path.expanduser("~/Ascend/ascend-toolkit/latest")]
    return [r for r in roots if r]


@functools.lru_cache(maxsize=None)
def detect_cann_version() -> Optional[Tuple[CannVersion, str]]:
    """The installed toolkit's version and the file it was read from, or None."""
    for root in _cann_roots():
        candidates = sorted(glob.glob(os.path.join(root, "*", "ascend_toolkit_install.info")))
        candidates += [os.path.join(root, "version.cfg"), os.path.join(root, "version.info")]
        for path in candidates:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            m = re.search(r"(?:^|\n)\s*(?:version|Version)\s*=\s*\[?([0-9][\w.]*)", text)
            if m:
                try:
                    return CannVersion(m.group(1)), path
                except ValueError:
                    continue
    return None


@functools.lru_cache(maxsize=None)
def detect_product() -> Optional[Tuple[str, str]]:
    """The product of the NPU this process sees (via aclrtGetSocName), and the SoC name, or None."""
    try:
        from . import _C  # noqa: WPS433 - optional at run time
        soc = _C.soc_name()
    except Exception:  # no extension, no CANN, no device: nothing detected
        return None
    if not soc:
        return None
    key = product_from_soc(soc)
    return (key, soc) if key else None


def resolve_target(product: Optional[str] = None, cann: Optional[str] = None,
                   detect: bool = True) -> Target:
    """Apply the selection precedence (see the module docstring)."""
    ctx_p, ctx_c = _context_target.get()
    if product:
        p, ps = normalize_product(product), "argument"
    elif ctx_p:
        p, ps = ctx_p, "ascend_moe.target()"
    elif _process_target[0]:
        p, ps = _process_target[0], "ascend_moe.set_target()"
    elif os.environ.get("ASCEND_MOE_PRODUCT"):
        p, ps = normalize_product(os.environ["ASCEND_MOE_PRODUCT"]), "environment ASCEND_MOE_PRODUCT"
    else:
        found = detect_product() if detect else None
        p, ps = (found[0], f"detected SoC {found[1]}") if found else (DEFAULT_PRODUCT, "default")
    if cann:
        c, cs = CannVersion(cann), "argument"
    elif ctx_c:
        c, cs = ctx_c, "ascend_moe.target()"
    elif _process_target[1]:
        c, cs = _process_target[1], "ascend_moe.set_target()"
    elif os.environ.get("ASCEND_MOE_CANN"):
        c, cs = CannVersion(os.environ["ASCEND_MOE_CANN"]), "environment ASCEND_MOE_CANN"
    else:
        found = detect_cann_version() if detect else None
        c, cs = (found[0], f"detected {found[1]}") if found else (DEFAULT_CANN, "default")
    warn_if_unknown(c)
    return Target(p, c, ps, cs)
