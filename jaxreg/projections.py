"""Constraint sets as parameter-space transforms: box, non-negative, L2 ball, L1 ball, max-norm.

Place them *after* the optimizer (and after any prox): each maps the new parameters
``w = p + u`` to their Euclidean projection onto the set, so the parameters satisfy the
constraint after every step (projected gradient descent). ``optax.projections`` has the
bare projection functions; jaxreg calls them where they compute the same thing (box,
non-negative) and otherwise accumulates norms from per-leaf partial sums (in the
leaves' precision, float32 for bf16/f16), never concatenating the tree (optax's
L1-ball projection ravels it into one vector and sorts it).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _checks, _param_space, _rules, _tree
from jaxreg.masks import Mask
from jaxreg.proximal import soft_threshold

__all__ = ["max_norm", "project_box", "project_l1_ball", "project_l2_ball", "project_nonnegative"]

# Bisection steps before the exact finishing steps of the L1-ball threshold: enough to
# pin the support in float32, so the finishing Newton loop ends after a pass or two.
_L1_BISECTION_STEPS = 30
# The factor that caps a unit's norm sqrt(ss) at @s0 (as max_norm and the L2 ball do).
_CAP_NORM = "const float n = __builtin_sqrtf(ss); f = n > @s0 ? @s0 / (n > 0.0f ? n : 1.0f) : 1.0f;"


def _at_count(scope: str, project: Any, radius: Any) -> Any:
    """The ``op`` of a ball: ``project(list_of_leaves, radius_now)`` on all leaves at once
    (``scope="global"``) or on each alone, with a schedule read at the step count."""

    def op(ws: list[jax.Array], count: jax.Array) -> list[jax.Array]:
        r = _tree.value_at(radius, count)
        if scope == "global":
            return project(ws, r)
        return [project([w], r)[0] for w in ws]

    return op


def _cap(norm: jax.Array, bound: Any) -> jax.Array:
    """The factor ``min(1, bound / norm)`` that brings a norm down to ``bound`` (1 for a zero norm).

    Differentiable everywhere off ``norm == bound``, also at a zero norm.
    """
    bound = jnp.asarray(bound).astype(norm.dtype)
    over = norm > bound
    return jnp.where(over, bound / jnp.where(over, norm, 1), 1).astype(norm.dtype)


def project_box(
    lower: chex.Numeric | Any, upper: chex.Numeric | Any, mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Clips every parameter into ``[lower, upper]``: the "hard" parameter box.

    Maps ``w = p + u`` to ``clip(w, lower, upper)``, i.e.
    ``optax.projections.projection_box`` applied as a transform. PyTorch users write
    this as ``p.data.clamp_(lower, upper)`` after ``optimizer.step()``. The constraint
    holds exactly after ``optax.apply_updates``: where ``p + (clip(w) - p)`` would round
    one ulp outside the box, the update is nudged one ulp inward.

    Args:
      lower: lower bound: a scalar or a schedule, or a pytree with the params' structure
        holding one bound per leaf (scalar or schedule) or per element (array).
      upper: upper bound, in the same form; ``lower <= upper`` everywhere.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    Example:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> tx = jaxreg.project_box(-1.0, 1.0)
      >>> params = {"w": jnp.array([0.5, 0.9])}
      >>> updates, _ = tx.update({"w": jnp.array([0.2, 0.5])}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([0.7, 1. ], dtype=float32)
    """
    fn = "project_box"
    lows, highs = jax.tree.leaves(_tree.unbox(lower)), jax.tree.leaves(_tree.unbox(upper))
    # A scalar bound on one side is compared with every leaf of a tree on the other.
    lows, highs = lows * (len(highs) if len(lows) == 1 else 1), highs * (len(lows) if len(highs) == 1 else 1)
    for low, high in zip(lows, highs):
        lo, hi = _checks.concrete(low), _checks.concrete(high)
        if lo is not None and hi is not None and not np.all(lo <= hi):
            raise ValueError(f"{fn}: lower must be <= upper, got lower={lower!r} and upper={upper!r}.")

    def op(ws: list[jax.Array], count: jax.Array, lo: list[Any], hi: list[Any]) -> list[jax.Array]:
        del count
        lo = [jnp.asarray(b).astype(w.dtype) for b, w in zip(lo, ws)]
        hi = [jnp.asarray(b).astype(w.dtype) for b, w in zip(hi, ws)]
        return optax.projections.projection_box(ws, lo, hi)

    tx = _param_space.params_transform(
        fn, op, mask=mask, per_leaf=(("lower", lower), ("upper", upper)), real_only=True, bounded=True
    )
    return _rules.describe(tx, _box_rule(mask, lower, upper))


def _box_rule(mask: Mask, lower: Any, upper: Any) -> _rules.Rule | None:
    """The fused form of a box with one lower and one upper bound (value or schedule) for every leaf."""
    clip = _rules.clip_code("x", "@s0", "@s1")

    def bounds(count):
        return [_tree.value_at(lower, count), _tree.value_at(upper, count)]

    return _param_space.params_rule(clip, bounds, mask, lower, upper, bounds=("@s0", "@s1"))


def project_nonnegative(mask: Mask = None) -> optax.GradientTransformationExtraArgs:
    """Clips negative parameters to zero: ``w <- max(w, 0)``.

    ``optax.projections.projection_non_negative`` applied as a transform.

    Args:
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.
    """

    def op(ws: list[jax.Array], count: jax.Array, *bounds: Any) -> list[jax.Array]:
        del count, bounds
        return optax.projections.projection_non_negative(ws)

    tx = _param_space.params_transform(
        "project_nonnegative",
        op,
        mask=mask,
        per_leaf=(("lower", 0.0), ("upper", jnp.inf)),
        real_only=True,
        bounded=True,
    )
    return _rules.describe(tx, _box_rule(mask, 0.0, jnp.inf))


def project_l2_ball(
    radius: chex.Numeric | optax.Schedule, scope: str = "global", mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Rescales the parameters into the L2 ball of ``radius``: ``w <- w * min(1, r / ||w||)``.

    With ``scope="global"`` the norm is over all selected leaves together (as
    ``optax.projections.projection_l2_ball`` on the tree, but accumulated from per-leaf
    sums); with ``scope="leaf"`` each leaf is projected on its own. Parameters already
    inside the ball are returned unchanged, bit for bit. Complex leaves count by
    their modulus.

    Args:
      radius: the ball's radius, > 0 (float or schedule).
      scope: ``"global"`` or ``"leaf"``.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.
    """
    fn = "project_l2_ball"
    _checks.check_positive(fn, "radius", radius)
    _checks.check_scope(fn, scope)

    def project(ws: list[jax.Array], r: Any) -> list[jax.Array]:
        norm = _tree.global_norm(ws)
        return [_tree.scaled(w, _cap(norm, r)) for w in ws]

    tx = _param_space.params_transform(fn, _at_count(scope, project, radius), mask=mask, hypers=(("radius", radius),))
    rule = _param_space.unit_rule(
        _CAP_NORM, None, lambda count: [_tree.value_at(radius, count)], mask, radius, joint=scope == "global"
    )
    return _rules.describe(tx, rule)


def _l1_ball_threshold(ws: list[jax.Array], radius: jax.Array) -> jax.Array:
    """The ``tau >= 0`` with ``sum max(|w| - tau, 0) == radius`` (given ``||w||_1 > radius``).

    Bisection brackets ``tau`` with per-leaf partial sums (O(number of leaves) extra
    memory, no sort, no concatenation); then Newton steps from below on the piecewise
    linear excess function (Michelot's algorithm) make it exact: each step solves for
    ``tau`` on the current support and stops once the support no longer shrinks. The
    search runs on constants; ``tau`` is then formed once more from its support ``S``,
    ``(sum_S |w| - radius) / |S|``, which carries the derivative (that of optax's
    sort-based projection), so the projection is reverse-differentiable.
    """
    dtype = radius.dtype
    live = [jnp.abs(_tree.wide(w)).astype(dtype) for w in ws]
    fixed = [jax.lax.stop_gradient(a) for a in live]
    r = jax.lax.stop_gradient(radius)

    def excess(tau):
        return sum(jnp.sum(jnp.maximum(a - tau, 0)) for a in fixed)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        above = excess(mid) > r
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    top = jnp.max(jnp.stack([jnp.max(a, initial=0.0) for a in fixed]))
    lo, _ = jax.lax.fori_loop(0, _L1_BISECTION_STEPS, bisect, (jnp.zeros_like(top), top))

    def solve(values, rad, tau):
        on = [a > tau for a in values]
        size = sum(jnp.sum(m, dtype=dtype) for m in on)
        mass = sum(jnp.sum(jnp.where(m, a, 0)) for m, a in zip(on, values))
        return (mass - rad) / jnp.maximum(size, 1)

    def step(carry):
        _, tau = carry
        return tau, jnp.maximum(solve(fixed, r, tau), tau)

    _, tau = jax.lax.while_loop(lambda c: c[1] > c[0], step, (lo, jnp.maximum(solve(fixed, r, lo), lo)))
    return solve(live, radius, tau)


def project_l1_ball(
    radius: chex.Numeric | optax.Schedule, scope: str = "global", mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Projects the parameters onto the L1 ball of ``radius``: a soft-threshold by ``tau``.

    ``w <- sign(w) * max(|w| - tau, 0)`` with the smallest ``tau >= 0`` that brings
    ``||w||_1`` down to ``radius`` (identity inside the ball); complex values shrink by
    their modulus, as in optax. Same result as
    ``optax.projections.projection_l1_ball``, but ``tau`` is found by bisection plus
    exact Newton steps over per-leaf sums instead of sorting the raveled tree, so it
    needs O(number of leaves) extra memory and works on sharded parameters.

    Args:
      radius: the ball's radius, > 0 (float or schedule).
      scope: ``"global"`` (one ball for all selected leaves) or ``"leaf"``.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    References:
      Duchi et al., *Efficient projections onto the l1-ball*, ICML 2008; Condat,
      *Fast projection onto the simplex and the l1 ball*, 2016.
    """
    fn = "project_l1_ball"
    _checks.check_positive(fn, "radius", radius)
    _checks.check_scope(fn, scope)

    def project(ws: list[jax.Array], r: Any) -> list[jax.Array]:
        norm = _tree.global_norm(ws, 1.0)
        r = jnp.asarray(r).astype(norm.dtype)
        tau = jnp.where(norm > r, _l1_ball_threshold(ws, r), 0)
        return [_shrink_modulus(w, tau) for w in ws]

    # No fused form: the threshold is a search over the values, not a factor of a norm.
    return _param_space.params_transform(fn, _at_count(scope, project, radius), mask=mask, hypers=(("radius", radius),))


def _shrink_modulus(w: jax.Array, tau: jax.Array) -> jax.Array:
    """``sign(w) * max(|w| - tau, 0)``: the soft threshold, for a complex value by its modulus
    (``w * max(0, 1 - tau / |w|)``, optax's ``sign(w) * projection(|w|)``)."""
    if not jnp.issubdtype(w.dtype, jnp.complexfloating):
        return soft_threshold(w, tau)
    modulus = jnp.abs(_tree.wide(w))
    t = _tree.real_for(tau, w)
    over = modulus > t
    return _tree.scaled(w, jnp.where(over, 1 - t / jnp.where(over, modulus, 1), 0))


def max_norm(
    max_value: chex.Numeric | optax.Schedule, axis: int = -1, mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Caps the L2 norm of every unit's weights at ``max_value`` (max-norm constraint).

    The units are the slices along ``axis``; each one's norm runs over all other axes.
    With ``axis=-1`` (the default) a unit is an output neuron of a Flax ``Dense`` kernel
    ``(in, out)`` or a filter of a ``Conv`` kernel: its incoming weights, as in
    Srivastava et al. Units with a larger norm are rescaled onto the sphere, the others
    are untouched. Note the convention: Keras' ``MaxNorm(axis=0)`` names the axis the
    norm runs over, jaxreg (like ``torch.nn.utils.prune.ln_structured``'s ``dim``)
    names the axis of the units.

    Args:
      max_value: the largest allowed norm per unit, > 0 (float or schedule).
      axis: the axis that indexes the units.
      mask: pytree of bools or callable ``params -> mask``; True where it applies. Every
        selected leaf needs ``axis`` in range: leave out biases and scalars.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    References:
      Srivastava et al., *Dropout: a simple way to prevent neural networks from
      overfitting*, JMLR 2014, section 5.1.
    """
    fn = "max_norm"
    _checks.check_positive(fn, "max_value", max_value)
    axis = _checks.check_axis_arg(fn, axis)

    def op(ws: list[jax.Array], count: jax.Array) -> list[jax.Array]:
        bound = _tree.value_at(max_value, count)
        return [_tree.scaled(w, _cap(_tree.unit_norms(w, axis), bound)) for w in ws]

    def check(paths, leaves):
        _tree.check_axis(fn, axis, paths, leaves)

    tx = _param_space.params_transform(fn, op, mask=mask, check=check, hypers=(("max_value", max_value),))
    rule = _param_space.unit_rule(_CAP_NORM, axis, lambda count: [_tree.value_at(max_value, count)], mask, max_value)
    return _rules.describe(tx, rule)
