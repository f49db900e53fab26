"""scikit-learn parity of the proximal transforms on the bundled diabetes data.

Proximal gradient descent (ISTA) is ``optax.chain(optax.sgd(lr), prox)`` with ``prox``
one of ``jaxreg.l1_prox`` / ``jaxreg.elastic_net_prox`` and ``lr = 1 / L``, ``L`` the
Lipschitz constant of the gradient of the smooth loss ``||y - Xw - b||^2 / (2n)``. It
runs in ``jax.lax.scan`` under ``jax.jit``, all in float32, and must reach

* ``Lasso(alpha)`` and ``ElasticNet(alpha, l1_ratio)`` coefficients to 1e-4 relative
  (``atol = 1e-4 * max|coef|``) with *the same exact zeros* (``== 0.0``), both for
  alphas that zero several coefficients and for alphas that zero none;
* an objective value, with the penalty term from ``jaxreg.penalties``, no larger than
  scikit-learn's at scikit-learn's solution, and the optimality (KKT) conditions with
  the penalty's gradient taken by ``jax.grad``: so the penalties and the proxes share
  one convention (``l2 / 2 * ||w||^2``, no stray factor 2);
* ``lasso_path`` along a warm-started sequence of jaxreg runs.

Two ways to leave the intercept unpenalized, as scikit-learn's ``fit_intercept=True``
does: center X and y (what scikit-learn does internally), or keep a bias leaf and keep
the prox off it with ``mask=``. The second is checked against ``intercept_`` too, with
a control: without the mask the prox also shrinks the bias, by exactly ``alpha``.

Iteration counts (measured on this data, float32): the centered problem has condition
number about 470, and ISTA from zero meets the tolerances after at most 4,000 steps
(Lasso alpha=0.01, no zeros; the sparse Lassos need <= 200, the elastic nets <= 150:
their L2 term makes them far better conditioned), so ``STEPS = 15_000``. Warm starts
along the path do not shorten the alpha=0.01 run (its slow direction is the smallest
eigenvector, which the sparser solutions leave untouched), so the path gets as many.
With a bias leaf the bias's curvature is 1: ``L`` is about 1 instead of 0.0091, ``lr``
110 times smaller, and the sparse cases used there need <= 8,000 steps, so
``MASK_STEPS = 30_000``. Errors reached (float32 floors): <= 1.1e-5 relative on the
centered data, <= 3.8e-5 with the bias leaf (lr ~ 1 stalls the slow direction a bit
earlier); objectives within 2e-8 relative of scikit-learn's; KKT residuals <= 7e-4 of
the L1 strength. Whole file: ~15 s on 2 CPU cores.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet, Lasso, lasso_path

import jaxreg

STEPS = 15_000  # ISTA on centered data, from zero or warm; the slowest case needs <= 4,000.
MASK_STEPS = 30_000  # with a unit bias column lr is ~110x smaller; cases here need <= 8,000.
SKLEARN = {"tol": 1e-10, "max_iter": 100_000}

RTOL = 1e-4  # coefficients: relative, with atol = RTOL * max|coef|
OBJ_RTOL = 1e-7  # objective: jaxreg's may exceed scikit-learn's by this much, relative
KKT_RTOL = 5e-3  # optimality conditions, relative to the L1 strength


@pytest.fixture(scope="module")
def data():
    x, y = load_diabetes(return_X_y=True)
    n = len(y)
    xc, yc = x - x.mean(0), y - y.mean()
    lipschitz = np.linalg.eigvalsh(xc.T @ xc / n).max()
    # With a bias leaf the smooth loss sees the design [X, 1]: its curvature along the
    # bias is 1, which dominates (the diabetes columns are centered and have unit norm).
    x1 = np.hstack([x, np.ones((n, 1))])
    lipschitz_bias = np.linalg.eigvalsh(x1.T @ x1 / n).max()
    return SimpleNamespace(
        x=x,
        y=y,
        xc=xc,
        yc=yc,
        lr=float(1.0 / lipschitz),
        lr_bias=float(1.0 / lipschitz_bias),
    )


def _prox(kind, l1, l2, lr, mask):
    if kind == "l1":
        return jaxreg.l1_prox(l1, learning_rate=lr, mask=mask)
    return jaxreg.elastic_net_prox(l1, l2, learning_rate=lr, mask=mask)


@functools.partial(jax.jit, static_argnames=("kind", "steps", "mask_bias"))
def _ista(x, y, params, lr, l1, l2, *, kind, steps, mask_bias=True):
    """ISTA from ``params``; a ``"b"`` leaf is an intercept (penalized only if not mask_bias).

    The data, lr and strengths are traced, so each (kind, steps) compiles once.
    """
    mask = {"w": True, "b": not mask_bias} if "b" in params else None
    tx = optax.chain(optax.sgd(lr), _prox(kind, l1, l2, lr, mask))

    def smooth(p):
        pred = x @ p["w"] + p["b"] if "b" in p else x @ p["w"]
        return 0.5 * jnp.mean((y - pred) ** 2)

    def step(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(smooth)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return p


def _f32(a):
    return jnp.asarray(a, jnp.float32)


def _run(xd, yd, lr, kind, l1, l2=0.0, steps=STEPS, w0=None, bias=False, mask_bias=True):
    w0 = np.zeros(xd.shape[1]) if w0 is None else w0
    params = {"w": _f32(w0)}
    if bias:
        params["b"] = jnp.zeros([], jnp.float32)
    p = _ista(_f32(xd), _f32(yd), params, _f32(lr), _f32(l1), _f32(l2), kind=kind, steps=steps, mask_bias=mask_bias)
    return {k: np.asarray(v) for k, v in p.items()}


def _check_same_solution(got, want):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale)
    np.testing.assert_array_equal(got == 0.0, want == 0.0, err_msg="different exact zeros")


def _objective(xc, yc, w, penalty):
    """Smooth part in float64; the penalty term is jaxreg's (float32)."""
    w64 = np.asarray(w, np.float64)
    return 0.5 * np.mean((yc - xc @ w64) ** 2) + float(penalty({"w": _f32(w)}))


def _check_optimal(d, got, want, penalty, l1):
    # 1. jaxreg's objective at its solution is no worse than at scikit-learn's.
    f_got, f_want = _objective(d.xc, d.yc, got, penalty), _objective(d.xc, d.yc, want, penalty)
    assert f_got <= f_want + OBJ_RTOL * abs(f_want), (f_got, f_want)

    # 2. KKT with the penalty's gradient by autodiff: on the support the smooth gradient
    # cancels grad(penalty); on the zeros it lies within [-l1, l1]. A penalty whose L2
    # term lacked the 1/2 (or whose L1 were scaled) would fail this by far.
    g = d.xc.T @ (d.xc @ np.asarray(got, np.float64) - d.yc) / len(d.yc)
    on = got != 0.0
    pg = np.asarray(jax.grad(lambda w: penalty({"w": w}))(_f32(got)))
    np.testing.assert_allclose(g[on] + pg[on], 0.0, atol=KKT_RTOL * l1, err_msg="stationarity on the support")
    assert np.all(np.abs(g[~on]) <= l1 * (1 + KKT_RTOL)), "subgradient condition on the zeros"


# (alpha, number of exact zeros in scikit-learn's solution). alpha=0.2 also has a tiny
# nonzero coefficient (0.23 against a max of 511) that must not be zeroed.
LASSO_CASES = [(0.01, 0), (0.05, 3), (0.2, 4), (1.0, 7)]


@pytest.mark.parametrize("alpha, n_zeros", LASSO_CASES)
def test_l1_prox_matches_lasso(data, alpha, n_zeros):
    want = Lasso(alpha=alpha, **SKLEARN).fit(data.x, data.y).coef_
    assert (want == 0.0).sum() == n_zeros  # the zero check below is not vacuous
    got = _run(data.xc, data.yc, data.lr, "l1", alpha)["w"]
    _check_same_solution(got, want)
    _check_optimal(data, got, want, lambda p: jaxreg.penalties.l1(p, alpha), alpha)


# (alpha, l1_ratio, number of exact zeros)
ENET_CASES = [(0.001, 0.5, 0), (0.05, 0.5, 1), (0.2, 0.98, 2), (0.5, 0.99, 4)]


@pytest.mark.parametrize("alpha, l1_ratio, n_zeros", ENET_CASES)
def test_elastic_net_prox_matches_elastic_net(data, alpha, l1_ratio, n_zeros):
    want = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, **SKLEARN).fit(data.x, data.y).coef_
    assert (want == 0.0).sum() == n_zeros
    l1, l2 = alpha * l1_ratio, alpha * (1 - l1_ratio)
    got = _run(data.xc, data.yc, data.lr, "enet", l1, l2)["w"]
    _check_same_solution(got, want)
    _check_optimal(data, got, want, lambda p: jaxreg.penalties.elastic_net(p, l1, l2), l1)


@pytest.mark.parametrize(
    "kind, alpha, l1_ratio",
    [("l1", 0.2, 1.0), ("l1", 1.0, 1.0), ("enet", 0.5, 0.99)],
)
def test_bias_leaf_excluded_by_mask(data, kind, alpha, l1_ratio):
    # Raw X and y, an intercept leaf "b", and the prox masked off it: the same fit as
    # scikit-learn's fit_intercept=True, intercept included.
    if kind == "l1":
        model = Lasso(alpha=alpha, **SKLEARN)
    else:
        model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, **SKLEARN)
    model.fit(data.x, data.y)
    l1, l2 = alpha * l1_ratio, alpha * (1 - l1_ratio)
    got = _run(data.x, data.y, data.lr_bias, kind, l1, l2, steps=MASK_STEPS, bias=True)
    assert (model.coef_ == 0.0).sum() >= 2
    _check_same_solution(got["w"], model.coef_)
    np.testing.assert_allclose(got["b"], model.intercept_, rtol=RTOL)


def test_bias_leaf_without_mask_is_shrunk(data):
    # Control for the test above: unmasked, l1_prox soft-thresholds the bias too, so the
    # intercept's optimality condition becomes mean(residual) = alpha * sign(b), i.e.
    # b = mean(y) - alpha (the columns of X are centered); w is unchanged.
    alpha = 1.0
    model = Lasso(alpha=alpha, **SKLEARN).fit(data.x, data.y)
    got = _run(data.x, data.y, data.lr_bias, "l1", alpha, steps=MASK_STEPS, bias=True, mask_bias=False)
    _check_same_solution(got["w"], model.coef_)
    np.testing.assert_allclose(got["b"], model.intercept_ - alpha, rtol=RTOL)
    assert abs(got["b"] - model.intercept_) > 0.5 * alpha


def test_warm_started_path_matches_lasso_path(data):
    # lasso_path fits no intercept: give it the centered data, as the Lasso above does.
    alphas, coefs, _ = lasso_path(data.xc, data.yc, alphas=np.array([1.0, 0.2, 0.01]), **SKLEARN)
    assert np.all(np.diff(alphas) < 0)  # scikit-learn orders the path by decreasing alpha
    w = np.zeros(data.xc.shape[1])
    for i, alpha in enumerate(alphas):
        w = _run(data.xc, data.yc, data.lr, "l1", alpha, w0=w)["w"]
        _check_same_solution(w, coefs[:, i])
    assert (coefs == 0.0).sum() > 0 and (coefs[:, -1] != 0.0).all()
