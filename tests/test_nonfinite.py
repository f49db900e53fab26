"""The non-finite policy: every transform propagates NaN (never turns it into a number),
and ``optax.apply_if_finite`` around a chain skips such steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalog import CATALOG

import jaxreg

ALL = {name: entry.make(entry.value, None) for name, entry in CATALOG.items()}


def _params():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)}


@pytest.mark.parametrize("name", sorted(ALL))
def test_nan_in_updates_propagates(name):
    tx, params = ALL[name], _params()
    updates = {"w": jnp.zeros((4, 3), jnp.float32).at[1, 2].set(jnp.nan)}
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    assert bool(jnp.isnan(out["w"][1, 2])), f"{name} turned a NaN update into a number"


@pytest.mark.parametrize("name", sorted(ALL))
def test_finite_input_gives_finite_output(name):
    tx, params = ALL[name], _params()
    updates = {"w": jnp.full((4, 3), 0.3, jnp.float32)}
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    assert bool(jnp.all(jnp.isfinite(out["w"])))


def test_group_lasso_nan_poisons_its_unit_only():
    tx, params = jaxreg.group_lasso_prox(0.1), _params()
    updates = {"w": jnp.zeros((4, 3), jnp.float32).at[1, 2].set(jnp.nan)}
    out, _ = tx.update(updates, tx.init(params), params)
    assert bool(jnp.all(jnp.isnan(out["w"][:, 2]))) and bool(jnp.all(jnp.isfinite(out["w"][:, :2])))


def test_apply_if_finite_skips_nonfinite_steps():
    params = _params()
    chain = optax.chain(jaxreg.clip_by_global_norm(1.0), optax.sgd(0.1), jaxreg.l1_prox(0.1, learning_rate=0.1))
    tx = optax.apply_if_finite(chain, max_consecutive_errors=3)
    state = tx.init(params)
    bad = {"w": jnp.full((4, 3), jnp.inf, jnp.float32)}
    updates, state = jax.jit(tx.update)(bad, state, params)
    assert bool(jnp.all(updates["w"] == 0)) and int(state.notfinite_count) == 1
    good = {"w": jnp.ones((4, 3), jnp.float32)}
    updates, state = jax.jit(tx.update)(good, state, params)
    assert bool(jnp.all(jnp.isfinite(updates["w"]))) and int(state.notfinite_count) == 0
