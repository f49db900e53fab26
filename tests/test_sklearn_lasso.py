"""scikit-learn as the oracle: proximal gradient with jaxreg's prox steps reaches
``Lasso`` and ``ElasticNet`` on the bundled diabetes data, zeros included.

scikit-learn minimizes ``||y - Xw - b||^2 / (2n) + alpha * l1_ratio * ||w||_1
+ alpha * (1 - l1_ratio) / 2 * ||w||^2``; with ``fit_intercept=True`` that is the same
problem on centered X and y. jaxreg runs ISTA: ``optax.sgd(lr)`` on the smooth part,
then ``l1_prox`` / ``elastic_net_prox`` with the same ``lr``, ``lr = 1 / L`` where
``L`` is the largest eigenvalue of ``X^T X / n``. The data's condition number is about
470, so 30,000 steps shrink the error by far more than the tolerance needs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet, Lasso

import jaxreg

STEPS = 30_000


@pytest.fixture(scope="module")
def data():
    x, y = load_diabetes(return_X_y=True)
    xc, yc = x - x.mean(0), y - y.mean()
    lipschitz = np.linalg.eigvalsh(xc.T @ xc / len(y)).max()
    return xc.astype(np.float32), yc.astype(np.float32), float(1.0 / lipschitz), (x, y)


def _ista(xc, yc, prox):
    x, y = jnp.asarray(xc), jnp.asarray(yc)
    tx = optax.chain(optax.sgd(prox.lr), prox.transform)
    params = {"w": jnp.zeros(x.shape[1], jnp.float32)}

    def smooth(p):
        return 0.5 * jnp.mean((x @ p["w"] - y) ** 2)

    def step(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(smooth)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=STEPS)[0][0])
    return np.asarray(run(params)["w"])


class Prox:
    def __init__(self, transform, lr):
        self.transform, self.lr = transform, lr


def _check_same_solution(got, want):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_array_equal(got == 0.0, want == 0.0, err_msg="different exact zeros")


def _objective(xc, yc, w, penalty):
    w64 = np.asarray(w, np.float64)
    return 0.5 * np.mean((xc.astype(np.float64) @ w64 - yc) ** 2) + float(penalty({"w": jnp.asarray(w)}))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5, 1.0])
def test_l1_prox_reaches_sklearn_lasso(data, alpha):
    xc, yc, lr, (x, y) = data
    want = Lasso(alpha=alpha, tol=1e-12, max_iter=1_000_000).fit(x, y).coef_
    got = _ista(xc, yc, Prox(jaxreg.l1_prox(alpha, learning_rate=lr), lr))
    _check_same_solution(got, want)

    # The penalty's convention agrees with the prox: jaxreg's objective is as low.
    def penalty(p):
        return jaxreg.penalties.l1(p, alpha)

    assert _objective(xc, yc, got, penalty) <= _objective(xc, yc, want.astype(np.float32), penalty) * (1 + 1e-6)


@pytest.mark.parametrize("alpha, l1_ratio", [(0.05, 0.5), (0.2, 0.8), (0.01, 0.2)])
def test_elastic_net_prox_reaches_sklearn_elastic_net(data, alpha, l1_ratio):
    xc, yc, lr, (x, y) = data
    want = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-12, max_iter=1_000_000).fit(x, y).coef_
    l1, l2 = alpha * l1_ratio, alpha * (1 - l1_ratio)
    got = _ista(xc, yc, Prox(jaxreg.elastic_net_prox(l1, l2, learning_rate=lr), lr))
    _check_same_solution(got, want)

    def penalty(p):
        return jaxreg.penalties.elastic_net(p, l1, l2)

    assert _objective(xc, yc, got, penalty) <= _objective(xc, yc, want.astype(np.float32), penalty) * (1 + 1e-6)


def test_cases_have_exact_zeros_to_compare(data):
    # Guards the zero checks above against passing vacuously.
    _, _, _, (x, y) = data
    assert (Lasso(alpha=0.5, tol=1e-12, max_iter=1_000_000).fit(x, y).coef_ == 0).sum() >= 5
