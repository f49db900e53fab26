"""dp_aggregate and per_example_clip against optax's DP-SGD aggregation under jit: bit for bit
without noise, the same draws with noise, the noise's distribution, and the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

import jaxreg

B = 6


def _per_example(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    shapes = {"b": (B, 3), "w": (B, 4, 3)}
    return {k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


GRADS = _per_example(0)


def _run(tx, grads=GRADS, steps=1):
    state, step, out = tx.init(None), jax.jit(tx.update), []
    for _ in range(steps):
        updates, state = step(grads, state)
        out.append(updates)
    return out, state


@pytest.mark.parametrize("clip", [0.5, 2.0, 100.0])
def test_without_noise_it_is_optaxs_bit_for_bit(clip):
    (ours,), state = _run(jaxreg.dp_aggregate(clip, 0.0, seed=1))
    theirs = optax.contrib.differentially_private_aggregate(clip, 0.0, key=1)
    with jax.numpy_dtype_promotion("standard"):
        want = jax.jit(theirs.update)(GRADS, theirs.init(None))[0]
    for k in GRADS:
        assert ours[k].shape == GRADS[k].shape[1:]
        np.testing.assert_array_equal(ours[k], want[k])
    norms = np.sqrt(sum(np.sum(np.asarray(g).reshape(B, -1) ** 2, axis=1) for g in GRADS.values()))
    np.testing.assert_allclose(state.clipped_fraction, np.mean(norms > clip))


def test_with_noise_it_draws_what_optax_draws():
    ours, _ = _run(jaxreg.dp_aggregate(1.0, 1.1, seed=4), steps=2)
    theirs = optax.contrib.differentially_private_aggregate(1.0, 1.1, key=4)
    with jax.numpy_dtype_promotion("standard"):
        state = theirs.init(None)
        for mine in ours:
            want, state = jax.jit(theirs.update)(GRADS, state)
            for k in GRADS:
                np.testing.assert_allclose(mine[k], want[k], rtol=1e-6, atol=1e-7)


def test_the_noise_has_std_noise_multiplier_times_clip_over_the_batch():
    zeros = {"w": jnp.zeros((4, 300, 300), jnp.float32)}
    (out,), _ = _run(jaxreg.dp_aggregate(0.5, 2.0, seed=0), zeros)
    np.testing.assert_allclose(np.std(np.asarray(out["w"])), 0.5 * 2.0 / 4, rtol=0.01)


def test_per_example_clip_is_the_noiseless_aggregate():
    (clipped,), state = _run(jaxreg.per_example_clip(0.7))
    sums, _ = optax.per_example_global_norm_clip(jax.tree.leaves(GRADS), 0.7)
    for k, s in zip(sorted(GRADS), sums):
        np.testing.assert_allclose(clipped[k], s / B, rtol=1e-6, atol=1e-7)
    assert 0 < float(state.clipped_fraction) <= 1


def test_a_chain_after_it_sees_the_aggregated_gradient():
    tx = optax.chain(jaxreg.dp_aggregate(1.0, 0.0), optax.sgd(0.1))
    params = jax.tree.map(lambda g: jnp.zeros(g.shape[1:]), GRADS)
    updates, _ = tx.update(GRADS, tx.init(params), params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: jaxreg.dp_aggregate(0.0, 1.0), r"dp_aggregate: l2_norm_clip must be a positive number, got 0.0"),
        (lambda: jaxreg.dp_aggregate(1.0, -1.0), r"dp_aggregate: noise_multiplier must be a non-negative number"),
        (lambda: jaxreg.per_example_clip(-2), r"per_example_clip: l2_norm_clip must be a positive number"),
    ],
)
def test_documented_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_gradients_without_a_common_batch_axis_name_the_leaf():
    tx = jaxreg.dp_aggregate(1.0, 1.0)
    with pytest.raises(ValueError, match=r"dp_aggregate: the per-example gradient params\['w'\] has shape \(5, 4, 3\)"):
        tx.update({"b": GRADS["b"], "w": jnp.zeros((5, 4, 3))}, tx.init(None))
    with pytest.raises(ValueError, match=r"dp_aggregate: the per-example gradient params\['s'\] has shape \(\)"):
        tx.update({"s": jnp.zeros(())}, tx.init(None))
    with pytest.raises(TypeError, match=r"dp_aggregate: seed must be an int or a key"):
        jaxreg.dp_aggregate(1.0, 1.0, seed="a")


def test_low_precision_gradients_keep_their_dtype_and_integer_leaves_give_zeros():
    low = {**jax.tree.map(lambda g: g.astype(jnp.bfloat16), GRADS), "n": jnp.ones((B, 2), jnp.int32)}
    (out,), _ = _run(jaxreg.per_example_clip(0.7), low)
    (ref,), _ = _run(jaxreg.per_example_clip(0.7), jax.tree.map(lambda g: g.astype(jnp.float32), GRADS))
    for k in GRADS:
        assert out[k].dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out[k], np.float32), ref[k], rtol=2e-2, atol=2e-2)
    assert out["n"].dtype == jnp.int32 and not np.any(out["n"])
