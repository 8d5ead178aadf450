"""mlcore's matrix product: the same bits on any thread count.

numpy's BLAS (OpenBLAS) splits a product differently on one thread than on several, and the
sums come out in another order: a training on a one-thread Dask worker then parts from the
same training on two threads after a few steps. :func:`matmul` runs the compiled kernel of
:mod:`mlcore.nn._fast` instead, whose every output element is summed in an order fixed by the
shapes alone (see ``_gemm_impl.h``), with mlcore's thread pool splitting the output, never a
sum.
Where the extension is not built or is switched off (:func:`mlcore.nn.fast_layers.
use_extension`), or for other dtypes, it is numpy's ``@``.
"""

from __future__ import annotations

import numpy as np

try:  # the compiled kernels
    from mlcore.nn import _fast
except ImportError:  # pragma: no cover - depends on the build
    _fast = None

__all__ = ["matmul"]


def matmul(a, b):
    """``a @ b`` for 2-D a (M, K) and b (K, N); any strides (``w.T`` costs no copy)."""
    a, b = np.asarray(a), np.asarray(b)
    from mlcore.nn import fast_layers  # here: fast_layers imports the layers, which import us

    if (
        a.ndim == 2
        and b.ndim == 2
        and a.dtype == b.dtype
        and a.dtype in (np.float32, np.float64)
        and a.shape[1] == b.shape[0]
        and _fast is not None
        and fast_layers.extension_active()
    ):
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
        _fast.gemm(a, b, out)
        return out
    return a @ b
