"""Proximal steps for non-smooth penalties: L1, elastic net, group lasso.

Each is a parameter-space transform: place it *after* the optimizer. With step size
``lr`` the optimizer's tentative parameters ``w = p + u`` are mapped to
``prox_{lr * R}(w) = argmin_x R(x) * lr + ||x - w||^2 / 2``, which is proximal gradient
descent (ISTA) when the optimizer is plain SGD on the smooth loss. Unlike adding the
penalty's subgradient to the loss, a proximal step produces *exact* zeros, so L1 really
sparsifies. optax has no such transforms; ``jaxopt.prox`` has the bare prox operators.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from jaxreg import _checks, _param_space, _rules, _tree
from jaxreg.masks import Mask

__all__ = ["elastic_net_prox", "group_lasso_prox", "l1_prox", "soft_threshold"]


def soft_threshold(x: jax.Array, threshold: chex.Numeric) -> jax.Array:
    """``sign(x) * max(|x| - threshold, 0)``, with exact (+0.0) zeros inside the band.

    Args:
      x: real array.
      threshold: non-negative scalar (or an array that broadcasts against ``x``).

    Returns:
      The shrunk array, in the dtype of ``x`` computed in at least float32.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.soft_threshold(jnp.array([-2.0, -0.5, 0.5, 2.0]), 1.0)
      Array([-1.,  0.,  0.,  1.], dtype=float32)
    """
    wx = _tree.wide(x)
    t = _tree.real_for(threshold, wx)
    return wx - jnp.clip(wx, -t, t)


# The soft threshold of x at @s0 as C++ for the fused pass (soft_threshold's formula).
_SOFT_THRESHOLD = "float c = x; " + _rules.clip_code("c", "-@s0", "@s0") + " x = x - c;"
# group_lasso_prox's factor from a unit's sum of squares ss, threshold @s0 (as its shrink).
_GROUP_SHRINK = (
    "const float n = __builtin_sqrtf(ss); float keep = 1.0f - @s0 / (n == 0.0f ? 1.0f : n);"
    " keep = keep < 0.0f ? 0.0f : keep; f = n == 0.0f ? (@s0 > 0.0f ? 0.0f : 1.0f) : keep;"
)


def _shrink_transform(fn, shrink, learning_rate, mask, fused, check=None, unit=None, real_only=True):
    """A prox step ``w -> shrink(w, lr, count)``; ``fused = (code, scalars, hypers)`` gives
    it an element-wise rule with ``scalars(lr, count)`` the values of ``@s0, ...``, or
    with ``unit = (factor, axis)`` a per-unit rule (``code`` is then None). ``hypers``
    are ``(name, value)`` pairs, checked to broadcast to every selected leaf."""
    lr = _checks.check_learning_rate(fn, learning_rate)

    def op(ws: list[jax.Array], count: jax.Array) -> list[jax.Array]:
        return [shrink(w, _tree.value_at(lr, count), count) for w in ws]

    code, scalars, named = fused
    named = (*named, ("learning_rate", lr))
    tx = _param_space.params_transform(fn, op, mask=mask, check=check, hypers=named, real_only=real_only)
    hypers = [value for _, value in named]

    def values(count):
        return scalars(_tree.value_at(lr, count), count)

    if unit is None:
        rule = _param_space.params_rule(code, values, mask, *hypers)
    else:
        rule = _param_space.unit_rule(*unit, values, mask, *hypers)
    return _rules.describe(tx, rule)


def l1_prox(
    strength: chex.Numeric | optax.Schedule,
    learning_rate: chex.Numeric | optax.Schedule | None = None,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """Soft-thresholds the new parameters: the proximal step of ``strength * ||w||_1``.

    Place it after the optimizer. With step size ``lr`` it maps each parameter
    ``w = p + u`` to ``sign(w) * max(|w| - lr * strength, 0)``; a weight it zeroes is
    exactly ``0.0``. With ``optax.sgd(lr)`` before it this is ISTA, which converges to
    scikit-learn's ``Lasso(alpha=strength)`` on the loss ``||y - Xw||^2 / (2n)``. After
    an adaptive optimizer (Adam) it is not the lasso: Adam's steps are about ``lr`` in
    size whatever the gradient, so the threshold ``lr * strength`` zeroes weights only
    for strengths near 1, and then nearly all at once.

    Args:
      strength: L1 coefficient lambda >= 0 (float, array or schedule).
      learning_rate: step size the optimizer used (float or schedule); None means 1.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    References:
      Parikh & Boyd, *Proximal Algorithms*, 2014, section 6.5.2.

    Example:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> tx = jaxreg.l1_prox(0.5)
      >>> params = {"w": jnp.array([1.0, -0.2])}
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([0.5, 0. ], dtype=float32)
    """
    fn = "l1_prox"
    _checks.check_nonnegative(fn, "strength", strength)

    def shrink(w, lr, count):
        return soft_threshold(w, lr * _tree.value_at(strength, count))

    fused = (_SOFT_THRESHOLD, lambda lr, c: [lr * _tree.value_at(strength, c)], (("strength", strength),))
    return _shrink_transform(fn, shrink, learning_rate, mask, fused)


def elastic_net_prox(
    l1: chex.Numeric | optax.Schedule,
    l2: chex.Numeric | optax.Schedule,
    learning_rate: chex.Numeric | optax.Schedule | None = None,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """Proximal step of ``l1 * ||w||_1 + l2 / 2 * ||w||^2``.

    Maps ``w = p + u`` to ``soft_threshold(w, lr * l1) / (1 + lr * l2)``. scikit-learn's
    ``ElasticNet(alpha, l1_ratio)`` minimizes ``||y - Xw||^2 / (2n)`` plus this penalty
    with ``l1 = alpha * l1_ratio`` and ``l2 = alpha * (1 - l1_ratio)``.

    Args:
      l1: L1 coefficient >= 0 (float, array or schedule).
      l2: L2 coefficient >= 0 (float, array or schedule), with the 1/2 convention.
      learning_rate: step size the optimizer used (float or schedule); None means 1.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    References:
      Zou & Hastie, *Regularization and variable selection via the elastic net*, 2005;
      Parikh & Boyd, *Proximal Algorithms*, 2014, section 6.5.3.
    """
    fn = "elastic_net_prox"
    _checks.check_nonnegative(fn, "l1", l1)
    _checks.check_nonnegative(fn, "l2", l2)

    def shrink(w, lr, count):
        shrunk = soft_threshold(w, lr * _tree.value_at(l1, count))
        return shrunk / _tree.real_for(1 + lr * _tree.value_at(l2, count), shrunk)

    fused = (
        _SOFT_THRESHOLD + " x = x / @s1;",
        lambda lr, c: [lr * _tree.value_at(l1, c), 1 + lr * _tree.value_at(l2, c)],
        (("l1", l1), ("l2", l2)),
    )
    return _shrink_transform(fn, shrink, learning_rate, mask, fused)


def group_lasso_prox(
    strength: chex.Numeric | optax.Schedule,
    axis: int = -1,
    learning_rate: chex.Numeric | optax.Schedule | None = None,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """Block soft-thresholding: the proximal step of ``strength * sum_g ||w_g||_2``.

    The groups are the slices along ``axis``: with ``axis=-1`` (the default) each output
    unit of a Flax ``Dense`` kernel ``(in, out)`` or each filter of a ``Conv`` kernel
    ``(h, w, in, out)`` is one group, the same convention as ``dim`` in
    ``torch.nn.utils.prune.ln_structured`` (use ``axis=0`` for PyTorch's ``(out, in)``
    layout). Each group ``w_g`` becomes ``max(0, 1 - lr * strength / ||w_g||) * w_g``,
    so a whole unit turns exactly zero at once. The groups are not weighted by
    ``sqrt(group size)``; scale ``strength`` for Yuan & Lin's weighting.

    Args:
      strength: coefficient lambda >= 0 (float, array or schedule).
      axis: the axis that indexes the groups; norms run over all other axes.
      learning_rate: step size the optimizer used (float or schedule); None means 1.
      mask: pytree of bools or callable ``params -> mask``; True where it applies. Every
        selected leaf needs ``axis`` in range: leave out biases and scalars.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    References:
      Yuan & Lin, *Model selection and estimation in regression with grouped
      variables*, 2006.
    """
    fn = "group_lasso_prox"
    _checks.check_nonnegative(fn, "strength", strength)
    axis = _checks.check_axis_arg(fn, axis)

    def shrink(w, lr, count):
        norms = _tree.unit_norms(w, axis)
        threshold = _tree.real_for(lr * _tree.value_at(strength, count), w)
        # A zero unit stays zero; a NaN norm makes the whole unit NaN (it propagates). A
        # norm of 0 can also be an underflow (entries near the smallest normal float):
        # such a unit is below any positive threshold, and left alone by a zero one.
        # The norm's derivative at 0 is 0 (_tree.safe_root), so gradients stay finite.
        keep = jnp.maximum(1 - threshold / jnp.where(norms == 0, 1, norms), 0)
        return _tree.scaled(w, jnp.where(norms == 0, jnp.where(threshold > 0, 0, 1).astype(keep.dtype), keep))

    def check(paths, leaves):
        _tree.check_axis(fn, axis, paths, leaves)

    fused = (None, lambda lr, c: [lr * _tree.value_at(strength, c)], (("strength", strength),))
    return _shrink_transform(fn, shrink, learning_rate, mask, fused, check, unit=(_GROUP_SHRINK, axis), real_only=False)
