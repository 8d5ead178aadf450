"""Build the Cython fast-layer extension; everything else is declared in pyproject.toml."""

import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
# no fused multiply-add contraction: the adam kernel must round like numpy, op by op
extra_compile = ["-O3", "-ffp-contract=off", "-fno-math-errno", *openmp]
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
        define_macros=macros,
        extra_compile_args=extra_compile,
        extra_link_args=openmp,
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
