"""Build the Cython fast-layer extension; everything else is declared in pyproject.toml."""

import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

threads = ["-pthread"]  # the kernels' own thread pool (_threads.h)
# no fused multiply-add contraction: the adam kernel must round like numpy, op by op
extra_compile = ["-O3", "-ffp-contract=off", "-fno-math-errno", *threads]
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
directives = {"language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True}
if os.environ.get("MLCORE_BOUNDSCHECK"):
    # a checked build for the tests that look for stray reads/writes: bounds checks on, and
    # no optimisation (the C compiler takes 10 s instead of 35 s, and keeps every access)
    directives.update(boundscheck=True, wraparound=True)
    extra_compile[0] = "-O0"

extensions = [
    Extension(
        "mlcore.nn._fast",
        ["mlcore/nn/_fast.pyx"],
        include_dirs=[np.get_include(), "mlcore/nn"],
        depends=[
            "mlcore/nn/_gemm.h",
            "mlcore/nn/_gemm_impl.h",
            "mlcore/nn/_conv_impl.h",
            "mlcore/nn/_precision.h",
            "mlcore/nn/_layers_impl.h",
            "mlcore/nn/_threads.h",
        ],
        define_macros=macros,
        extra_compile_args=extra_compile,
        extra_link_args=threads,
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
