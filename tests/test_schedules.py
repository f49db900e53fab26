"""jaxreg's schedules before step 0: clamped to step 0, as optax's schedules are."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg

COUNTS = jnp.asarray([-100, -7, -1, 0, 1, 5, 12], jnp.int32)


def test_epoch_decay_is_optax_exponential_decay_with_staircase_at_every_step():
    got = jax.jit(jax.vmap(jaxreg.epoch_decay(0.1, 0.2, steps_per_epoch=5)))(COUNTS)
    want = jax.vmap(optax.exponential_decay(0.1, transition_steps=5, decay_rate=0.8, staircase=True))(COUNTS)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(got[0]) == np.float32(0.1)  # not 0.1 / 0.8**20


def test_inverse_sqrt_decay_is_init_value_before_step_zero():
    got = np.asarray(jax.jit(jax.vmap(jaxreg.inverse_sqrt_decay(0.1, gamma=1.0)))(COUNTS))
    np.testing.assert_array_equal(got[:4], np.float32(0.1))  # not NaN (the root of 1 - 100) or inf
    np.testing.assert_allclose(got[4:], 0.1 / np.sqrt(1 + np.asarray(COUNTS[4:], np.float32)), rtol=1e-6)
