"""Build ascend-moe.

The C++ extensions ``ascend_moe._C`` (the aclnn dispatcher) and ``ascend_moe.kernels._scan`` /
``_select`` / ``_epilogue`` / ``_gemm`` (CPU kernel helpers) need only a C++ compiler and pybind11: CANN is loaded at run time with dlopen, so no CANN
header or library is used at build time, and nothing links against torch.  The NumPy simulator in ``sim/`` is installed as
``ascend_moe.sim``.
"""
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ext_modules = [
    Pybind11Extension(
        "ascend_moe._C",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        libraries=["dl"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    ),
    # CPU kernels' compiled helpers, one module per file of csrc/kernels/: _scan (the bf16 subnormal guard's
    # scan, the bf16 widening), _select (the gate's top-k, row max, ReduceSum tree and top-2 sums), _epilogue
    # (the A8W4 fixpipe rounding, the swiglu-quant epilogues, the finalize-routing dequant-scatter);
    # pybind11 only, no torch
    *[
        Pybind11Extension(
            f"ascend_moe.kernels._{name}",
            [f"csrc/kernels/{name}.cpp"],
            depends=["csrc/kernels/helpers.h"],   # the shared buffer check and row-parallel runner
            cxx_std=17,
            # no contraction of a * b + c into one FMA: the helpers promise IEEE operations one at a time.
            # -fno-trapping-math changes no value (nothing here reads the floating-point exception flags); it
            # lets GCC vectorise loops that compare and select floats
            extra_compile_args=["-O3", "-Wall", "-Wextra", "-ffp-contract=off", "-fno-trapping-math"],
            extra_link_args=["-pthread"],
            libraries=["dl"],  # dlopen / dlsym of torch's already loaded OpenMP runtime (helpers.h)
        )
        for name in ("scan", "select", "epilogue")
    ],
    # _gemm (the grouped bf16 / fp16 GEMM on exactly widened operands, and its fp32 form): its a * b + c may
    # contract into one FMA, which changes no value for bf16 / fp16 (every product of two such values is exact in
    # fp32); for fp32 operands either form is fp32 accumulation within the summation bound, the contract there
    Pybind11Extension(
        "ascend_moe.kernels._gemm",
        ["csrc/kernels/gemm.cpp"],
        depends=["csrc/kernels/helpers.h"],
        cxx_std=17,
        extra_compile_args=["-O3", "-Wall", "-Wextra", "-ffp-contract=fast", "-fno-trapping-math"],
        extra_link_args=["-pthread"],
        libraries=["dl"],
    ),
]

setup(
    name="ascend-moe",
    version="0.1.0",
    description="Ascend MoE operators: aclnn hardware path, bit-faithful NumPy simulator, "
    "per-product constraint checker",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # Discovered, not listed by hand: a subpackage missing from a hand list installs fine in editable
    # mode and breaks only in a wheel.  The simulator lives at top-level sim/ and installs as ascend_moe.sim.
    packages=(find_packages(include=["ascend_moe", "ascend_moe.*"])
              + ["ascend_moe.sim"] + ["ascend_moe.sim." + p for p in find_packages("sim")]),
    package_dir={"ascend_moe.sim": "sim"},
    # the simulated npu device's C++ source is compiled on first use against the installed torch
    package_data={"ascend_moe": ["presets/*.json", "compat/*.txt"], "ascend_moe.device": ["csrc/*.cpp"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    # ninja: torch.utils.cpp_extension builds the simulated npu device with it
    install_requires=["numpy>=1.24", "ml_dtypes>=0.4", "torch>=2.4", "ninja", "xxhash>=3.0"],
    # scipy: the op pages' examples (tests/simulated run them unchanged) import scipy.special
    extras_require={"test": ["pytest>=7", "hypothesis>=6", "scipy"]},
    zip_safe=False,
)
