"""add_gradient_noise against optax.add_noise: the same numbers on float32 gradients under jit,
the same distribution, a key that resumes, masks, schedules and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for k, s in {"b": (3,), "w": (4, 3)}.items()}


GRADS = _tree(0)


def _steps(tx, n, grads=GRADS, state=None):
    state = tx.init(grads) if state is None else state
    step, out = jax.jit(tx.update), []
    for _ in range(n):
        updates, state = step(grads, state)
        out.append(updates)
    return out, state


@pytest.mark.parametrize("seed", [0, 7])
def test_the_same_numbers_as_optax_add_noise_step_after_step(seed):
    ours, _ = _steps(jaxreg.add_gradient_noise(0.3, 0.55, seed=seed), 3)
    with jax.numpy_dtype_promotion("standard"):
        theirs, _ = _steps(optax.add_noise(0.3, 0.55, key=seed), 3)
    for a, b in zip(ours, theirs):
        for k in GRADS:
            np.testing.assert_array_equal(a[k], b[k])


def test_a_typed_key_and_raw_key_data_seed_the_same_stream():
    a, _ = _steps(jaxreg.add_gradient_noise(0.1, seed=jax.random.key(3)), 1)
    b, _ = _steps(jaxreg.add_gradient_noise(0.1, seed=jax.random.key_data(jax.random.key(3))), 1)
    c, _ = _steps(jaxreg.add_gradient_noise(0.1, seed=3), 1)
    for k in GRADS:
        np.testing.assert_array_equal(a[0][k], b[0][k])
        np.testing.assert_array_equal(a[0][k], c[0][k])


def test_a_restored_state_resumes_the_stream():
    tx = jaxreg.add_gradient_noise(0.1)
    straight, _ = _steps(tx, 4)
    _, half = _steps(tx, 2)
    restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), half)  # through host memory, as a checkpoint
    resumed, _ = _steps(tx, 2, state=restored)
    for k in GRADS:
        np.testing.assert_array_equal(resumed[1][k], straight[3][k])


def test_the_noise_has_the_annealed_variance():
    zeros = {"w": jnp.zeros((200, 250), jnp.float32)}
    tx = jaxreg.add_gradient_noise(0.5, gamma=0.55, seed=1)
    out, _ = _steps(tx, 3, zeros)
    for t, updates in enumerate(out, start=1):
        z = np.asarray(updates["w"])
        np.testing.assert_allclose(np.var(z), 0.5 / t**0.55, rtol=0.02)
        assert abs(np.mean(z)) < 0.01


def test_mask_and_schedule_and_dtypes():
    tx = jaxreg.add_gradient_noise(lambda count: 0.1 * (count.astype(jnp.float32) + 1), mask={"b": False, "w": True})
    out, _ = _steps(tx, 2)
    np.testing.assert_array_equal(out[1]["b"], GRADS["b"])
    alone, _ = _steps(
        jaxreg.add_gradient_noise(lambda count: 0.1 * (count.astype(jnp.float32) + 1)), 2, {"w": GRADS["w"]}
    )
    np.testing.assert_array_equal(out[1]["w"], alone[1]["w"])
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), GRADS)
    (noisy,), _ = _steps(jaxreg.add_gradient_noise(0.1), 1, low)
    (exact,), _ = _steps(jaxreg.add_gradient_noise(0.1), 1, jax.tree.map(lambda x: x.astype(jnp.float32), low))
    for k in GRADS:
        assert noisy[k].dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(noisy[k], np.float32), exact[k], rtol=1e-2, atol=1e-2)
    ints = {"n": jnp.arange(3), **GRADS}
    (out,), _ = _steps(jaxreg.add_gradient_noise(0.1), 1, ints)
    np.testing.assert_array_equal(out["n"], ints["n"])


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: jaxreg.add_gradient_noise(-0.1), ValueError, r"add_gradient_noise: eta must be a non-negative number"),
        (lambda: jaxreg.add_gradient_noise(0.1, gamma=-1), ValueError, r"add_gradient_noise: gamma must be a non-neg"),
        (
            lambda: jaxreg.add_gradient_noise(0.1, seed=1.5),
            TypeError,
            r"add_gradient_noise: seed must be an int or a key",
        ),
    ],
)
def test_documented_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_complex_gradients_are_refused():
    with pytest.raises(TypeError, match=r"add_gradient_noise: params\['z'\] is complex64, but .* real values only"):
        jaxreg.add_gradient_noise(0.1).init({"z": jnp.ones(2, jnp.complex64)})
