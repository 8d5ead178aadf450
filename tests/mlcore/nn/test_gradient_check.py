"""The numerical-gradient helpers against functions with known gradients."""

import numpy as np
import pytest

from mlcore.nn.gradient_check import (
    eval_numerical_gradient,
    eval_numerical_gradient_array,
    grad_check_sparse,
    rel_error,
)


def test_rel_error_definition():
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert rel_error(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    # the denominator is floored at 1e-8
    assert rel_error(np.array([0.0]), np.array([1e-10])) == pytest.approx(1e-2)


def test_eval_numerical_gradient_of_known_function():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    before = x.copy()
    grad = eval_numerical_gradient(lambda x: np.sum(x**3) + np.sum(np.sin(x)), x)
    assert rel_error(grad, 3 * before**2 + np.cos(before)) < 1e-8
    np.testing.assert_array_equal(x, before)  # x restored in place


def test_eval_numerical_gradient_array_of_known_function():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3))
    df = rng.standard_normal((2, 3))
    before = x.copy()
    grad = eval_numerical_gradient_array(lambda x: np.exp(x), x, df)
    assert rel_error(grad, np.exp(before) * df) < 1e-8
    np.testing.assert_array_equal(x, before)


def test_grad_check_sparse_reports_small_and_large_errors():
    x = np.random.default_rng(2).standard_normal((5, 5))
    good = grad_check_sparse(lambda x: np.sum(x**2), x, 2 * x, num_checks=5, seed=0, verbose=False)
    bad = grad_check_sparse(lambda x: np.sum(x**2), x, 3 * x, num_checks=5, seed=0, verbose=False)
    assert len(good) == 5 and max(good) < 1e-8
    assert min(bad) == pytest.approx(0.2, rel=1e-6)  # |2 - 3| / (2 + 3)
