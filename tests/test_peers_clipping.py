"""global_norm, clip_by_block_rms and adaptive_grad_clip against their peers (torch, optax) under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxreg


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    shapes = {"b": (5,), "w": (4, 5), "heads": (3, 2, 4), "conv": (3, 3, 2, 4), "s": ()}
    return {k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


@pytest.mark.parametrize("p", [1.0, 2.0, "inf"])
def test_global_norm_is_torchs_total_norm(p):
    tree = _tree(0)
    want = torch.nn.utils.get_total_norm([torch.tensor(np.asarray(x)) for x in jax.tree.leaves(tree)], float(p))
    got = jax.jit(lambda t: jaxreg.global_norm(t, p))(tree)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6)


def test_global_norm_skips_integer_leaves_and_is_zero_on_an_empty_tree():
    assert float(jaxreg.global_norm({"a": jnp.array([3.0, 4.0]), "n": jnp.array(7)})) == 5.0
    assert float(jaxreg.global_norm({})) == 0.0


def test_global_norm_refuses_a_norm_type_below_one():
    with pytest.raises(ValueError, match=r"global_norm: norm_type must be a number p >= 1 or inf, got 0.5"):
        jaxreg.global_norm({}, 0.5)


@pytest.mark.parametrize("threshold", [0.05, 0.5, 10.0])
def test_clip_by_block_rms_is_optaxs(threshold):
    grads = _tree(1)
    ours, theirs = jaxreg.clip_by_block_rms(threshold), optax.clip_by_block_rms(threshold)
    got = jax.jit(ours.update)(grads, ours.init(grads))[0]
    want = theirs.update(grads, theirs.init(grads))[0]
    for k in grads:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=1e-7, err_msg=k)


def test_clip_by_block_rms_refuses_a_non_positive_threshold():
    with pytest.raises(ValueError, match=r"clip_by_block_rms: threshold must be a positive number, got 0.0"):
        jaxreg.clip_by_block_rms(0.0)


@pytest.mark.parametrize(("clipping", "eps"), [(0.01, 1e-3), (0.3, 1e-3), (1.0, 0.5)])
def test_adaptive_grad_clip_is_optaxs_and_records_the_clipped_units(clipping, eps):
    params, grads = _tree(2), _tree(3, 0.5)
    ours, theirs = jaxreg.adaptive_grad_clip(clipping, eps), optax.adaptive_grad_clip(clipping, eps)
    got, state = jax.jit(ours.update)(grads, ours.init(params), params)
    want = theirs.update(grads, theirs.init(params), params)[0]
    for k in grads:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=1e-7, err_msg=k)
    # Units as optax cuts them: b, s one each; w 5; heads 2 * 4; conv 4.
    clipped = units = 0
    for k, axes in {"b": None, "s": None, "w": (0,), "heads": (0,), "conv": (0, 1, 2)}.items():
        g = np.sqrt(np.sum(np.asarray(grads[k]) ** 2, axis=axes))
        w = np.sqrt(np.sum(np.asarray(params[k]) ** 2, axis=axes))
        clipped += np.sum(g >= clipping * np.maximum(w, eps))
        units += np.size(g)
    np.testing.assert_allclose(state.clipped_fraction, clipped / units, rtol=1e-6)
    assert 0 < clipped if clipping < 1 else True


def test_adaptive_grad_clip_errors():
    with pytest.raises(ValueError, match=r"adaptive_grad_clip: clipping must be a positive number, got -1"):
        jaxreg.adaptive_grad_clip(-1)
    with pytest.raises(ValueError, match=r"adaptive_grad_clip: eps must be a non-negative number, got -0.1"):
        jaxreg.adaptive_grad_clip(0.1, eps=-0.1)
    tx = jaxreg.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match=r"adaptive_grad_clip: params\['x'\] has rank 6 .* leave it out with mask="):
        tx.init({"x": jnp.zeros((1,) * 6)})
    params = {"x": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"adaptive_grad_clip: this transform reads the parameters"):
        tx.update(params, tx.init(params))
