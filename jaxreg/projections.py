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

__all__ = [
    "max_norm",
    "min_max_norm",
    "project_box",
    "project_halfspace",
    "project_hyperplane",
    "project_l1_ball",
    "project_l1_sphere",
    "project_l2_ball",
    "project_l2_sphere",
    "project_linf_ball",
    "project_nonnegative",
    "project_simplex",
    "unit_norm",
]

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


def _simplex_threshold(ws: list[jax.Array], scale: jax.Array) -> jax.Array:
    """The ``tau`` with ``sum max(w - tau, 0) == scale`` over all entries of ``ws`` (real).

    As :func:`_l1_ball_threshold`: bisection on per-leaf sums between ``min(w) -
    scale / n`` (excess >= scale) and ``max(w)`` (excess 0), then exact Newton steps from
    below (Michelot), then ``tau`` formed once more from its support so that it carries
    the derivative of the sort-based projection.
    """
    dtype = scale.dtype
    live = [_tree.wide(w).astype(dtype) for w in ws]
    fixed = [jax.lax.stop_gradient(a) for a in live]
    s = jax.lax.stop_gradient(scale)
    n = sum(a.size for a in fixed)

    def excess(tau):
        return sum(jnp.sum(jnp.maximum(a - tau, 0)) for a in fixed)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        above = excess(mid) > s
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    top = jnp.max(jnp.stack([jnp.max(a) for a in fixed if a.size]))
    bottom = jnp.min(jnp.stack([jnp.min(a) for a in fixed if a.size])) - s / n
    lo, _ = jax.lax.fori_loop(0, _L1_BISECTION_STEPS, bisect, (bottom, top))

    def solve(values, total, tau):
        on = [a > tau for a in values]
        size = sum(jnp.sum(m, dtype=dtype) for m in on)
        mass = sum(jnp.sum(jnp.where(m, a, 0)) for m, a in zip(on, values))
        return (mass - total) / jnp.maximum(size, 1)

    def step(carry):
        _, tau = carry
        return tau, jnp.maximum(solve(fixed, s, tau), tau)

    _, tau = jax.lax.while_loop(lambda c: c[1] > c[0], step, (lo, jnp.maximum(solve(fixed, s, lo), lo)))
    return solve(live, scale, tau)


def _simplex(ws: list[jax.Array], scale: Any) -> list[jax.Array]:
    """``max(w - tau, 0)`` with ``sum == scale`` (real leaves, in their compute dtype)."""
    sized = [w for w in ws if jnp.size(w)]
    if not sized:
        return ws
    s = jnp.asarray(scale).astype(_tree.widest_real(sized))
    tau = _simplex_threshold(sized, s)
    return [jnp.maximum(_tree.wide(w) - _tree.real_for(tau, w), 0) for w in ws]


def project_simplex(
    scale: chex.Numeric | optax.Schedule = 1.0, scope: str = "global", mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Projects the parameters onto the simplex ``{w >= 0, sum(w) = scale}``.

    ``w <- max(w - tau, 0)`` with the ``tau`` (of either sign) that makes the entries
    sum to ``scale``: the Euclidean projection, as ``optax.projections.projection_simplex``
    on the same tree (``scope="global"``, all selected leaves together) or on each leaf
    (``scope="leaf"``, e.g. one probability vector per leaf). ``tau`` is found by
    bisection plus exact Newton steps over per-leaf sums, without raveling the tree.
    Real values only.

    Args:
      scale: what the entries sum to, > 0 (float or schedule); 1 is the probability simplex.
      scope: ``"global"`` or ``"leaf"``.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    References:
      Michelot, *A finite algorithm for finding the projection of a point onto the
      canonical simplex of R^n*, 1986; Condat, *Fast projection onto the simplex and
      the l1 ball*, 2016.
    """
    fn = "project_simplex"
    _checks.check_positive(fn, "scale", scale)
    _checks.check_scope(fn, scope)
    tx = _param_space.params_transform(
        fn, _at_count(scope, _simplex, scale), mask=mask, hypers=(("scale", scale),), real_only=True
    )
    return tx


def project_l1_sphere(
    radius: chex.Numeric | optax.Schedule = 1.0, scope: str = "global", mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Projects the parameters onto the L1 sphere ``{||w||_1 = radius}``.

    ``w <- sign(w) * simplex_radius(|w|)``: the moduli are projected onto the simplex of
    ``radius`` (see :func:`project_simplex`) and keep their signs, as
    ``optax.projections.projection_l1_sphere``. Unlike :func:`project_l1_ball` this also
    grows parameters inside the ball. One difference: an exact zero counts as
    positive, so that it can grow; optax takes its sign as 0 and keeps it at zero, which
    misses the sphere when ``||w||_1 < radius`` and some entries are 0 (outside the ball
    zeros stay zero in both). Complex values keep their phase.

    Args:
      radius: the sphere's radius, > 0 (float or schedule).
      scope: ``"global"`` (one sphere for all selected leaves) or ``"leaf"``.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.
    """
    fn = "project_l1_sphere"
    _checks.check_positive(fn, "radius", radius)
    _checks.check_scope(fn, scope)

    def project(ws: list[jax.Array], r: Any) -> list[jax.Array]:
        moduli = _simplex([jnp.abs(_tree.wide(w)) for w in ws], r)
        # sign(0) is taken as +1: a zero entry may have to grow to reach the sphere.
        signs = [jnp.where(w == 0, jnp.ones_like(w), jnp.sign(w)) for w in map(_tree.wide, ws)]
        return [sg * m.astype(_tree.compute_dtype(sg.dtype)) for sg, m in zip(signs, moduli)]

    return _param_space.params_transform(fn, _at_count(scope, project, radius), mask=mask, hypers=(("radius", radius),))


def project_l2_sphere(
    radius: chex.Numeric | optax.Schedule = 1.0, scope: str = "global", mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Rescales the parameters onto the L2 sphere: ``w <- w * radius / ||w||``.

    ``optax.projections.projection_l2_sphere`` on the selected leaves together
    (``scope="global"``) or on each leaf (``scope="leaf"``, a fixed-norm weight per
    tensor). Where ``||w|| = 0`` the projection is not unique: optax returns NaN,
    jaxreg leaves the zeros as they are (and their derivative finite). Complex leaves
    count by their modulus.

    Args:
      radius: the sphere's radius, > 0 (float or schedule).
      scope: ``"global"`` or ``"leaf"``.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.
    """
    fn = "project_l2_sphere"
    _checks.check_positive(fn, "radius", radius)
    _checks.check_scope(fn, scope)

    def project(ws: list[jax.Array], r: Any) -> list[jax.Array]:
        norm = _tree.global_norm(ws)
        bound = jnp.asarray(r).astype(norm.dtype)
        nonzero = norm > 0
        factor = jnp.where(nonzero, bound / jnp.where(nonzero, norm, 1), 1)
        return [_tree.scaled(w, factor) for w in ws]

    tx = _param_space.params_transform(fn, _at_count(scope, project, radius), mask=mask, hypers=(("radius", radius),))
    rule = _param_space.unit_rule(
        "const float n = __builtin_sqrtf(ss); f = n > 0.0f ? @s0 / n : 1.0f;",
        None,
        lambda count: [_tree.value_at(radius, count)],
        mask,
        radius,
        joint=scope == "global",
    )
    return _rules.describe(tx, rule)


def project_linf_ball(
    radius: chex.Numeric | optax.Schedule, mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Clips every parameter into ``[-radius, radius]``: the L-infinity ball.

    ``optax.projections.projection_linf_ball`` as a transform; the same as
    ``project_box(-radius, radius)`` (element-wise, so one ball for the tree and one per
    leaf coincide, and it fuses into :func:`jaxreg.apply_step`). The bound holds
    exactly after ``optax.apply_updates``. Real values only.

    Args:
      radius: the ball's radius, > 0 (float or schedule).
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.
    """
    fn = "project_linf_ball"
    _checks.check_positive(fn, "radius", radius)
    lower = (lambda count: -radius(count)) if callable(radius) else -radius

    def op(ws: list[jax.Array], count: jax.Array, lo: list[Any], hi: list[Any]) -> list[jax.Array]:
        del count
        return [
            jnp.clip(w, jnp.asarray(a).astype(w.dtype), jnp.asarray(b).astype(w.dtype)) for w, a, b in zip(ws, lo, hi)
        ]

    tx = _param_space.params_transform(
        fn, op, mask=mask, per_leaf=(("lower", lower), ("upper", radius)), real_only=True, bounded=True
    )
    return _rules.describe(tx, _box_rule(mask, lower, radius))


def _dot(xs: list[jax.Array], ys: list[Any], dtype: Any) -> jax.Array:
    """``<x, y>`` over leaves (real), each leaf broadcast, in ``dtype``."""
    total = jnp.zeros([], dtype)
    for x, y in zip(xs, ys):
        total = total + jnp.sum(_tree.wide(x).astype(dtype) * jnp.asarray(y).astype(dtype))
    return total


def _affine(fn: str, a: Any, b: Any, scope: str, mask: Mask, halfspace: bool) -> optax.GradientTransformationExtraArgs:
    _checks.check_scope(fn, scope)
    _checks._number(fn, "b", b)  # a real number, an array of them or a schedule
    normals = [_checks.concrete(x) for x in jax.tree.leaves(_tree.unbox(a))]
    if normals and all(x is not None and not np.any(x) for x in normals):
        kind = "halfspace" if halfspace else "hyperplane"
        raise ValueError(f"{fn}: a must not be zero everywhere, got {a!r}; it is the normal of the {kind}.")

    def project(ws: list[jax.Array], avals: list[Any], bound: Any) -> list[jax.Array]:
        dtype = _tree.widest_real(ws)
        aa = _dot([jnp.broadcast_to(jnp.asarray(x), jnp.shape(w)) for x, w in zip(avals, ws)], avals, dtype)
        step = (jnp.asarray(bound).astype(dtype) - _dot(ws, avals, dtype)) / aa
        if halfspace:
            step = jnp.minimum(step, 0)
        return [
            (_tree.wide(w) + _tree.real_for(step, w) * jnp.asarray(x).astype(_tree.compute_dtype(w.dtype)))
            for w, x in zip(ws, avals)
        ]

    def op(ws: list[jax.Array], count: jax.Array, avals: list[Any]) -> list[jax.Array]:
        bound = _tree.value_at(b, count)
        avals = [_tree.value_at(x, count) for x in avals]
        if scope == "global":
            return project(ws, avals, bound)
        return [project([w], [x], bound)[0] for w, x in zip(ws, avals)]

    return _param_space.params_transform(fn, op, mask=mask, per_leaf=(("a", a),), real_only=True)


def project_halfspace(
    a: Any, b: chex.Numeric | optax.Schedule, scope: str = "global", mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Projects the parameters onto the halfspace ``{w : <a, w> <= b}``.

    ``w <- w + min(0, (b - <a, w>) / <a, a>) * a``: parameters inside are unchanged,
    those outside move along ``a`` onto the boundary. ``optax.projections.projection_halfspace``
    as a transform. With ``scope="global"`` the inner products run over all selected
    leaves; with ``scope="leaf"`` each leaf has its own halfspace ``<a_leaf, w_leaf> <= b``.
    Real values only.

    Args:
      a: the normal: a tree with the params' structure (an array per leaf that
        broadcasts to it) or one value for every leaf (``a=1.0``: ``sum(w) <= b``).
      b: the offset, a scalar (float or schedule).
      scope: ``"global"`` or ``"leaf"``.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.
    """
    return _affine("project_halfspace", a, b, scope, mask, halfspace=True)


def project_hyperplane(
    a: Any, b: chex.Numeric | optax.Schedule, scope: str = "global", mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Projects the parameters onto the hyperplane ``{w : <a, w> = b}``.

    ``w <- w + ((b - <a, w>) / <a, a>) * a``: ``optax.projections.projection_hyperplane``
    as a transform (e.g. ``a=1.0, b=0.0`` keeps the weights zero-mean). With
    ``scope="leaf"`` each leaf has its own hyperplane ``<a_leaf, w_leaf> = b``. Real
    values only.

    Args:
      a: the normal: a tree with the params' structure or one value for every leaf.
      b: the offset, a scalar (float or schedule).
      scope: ``"global"`` or ``"leaf"``.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.
    """
    return _affine("project_hyperplane", a, b, scope, mask, halfspace=False)


# Keras' backend.epsilon(), added to a unit's norm in the denominator of its constraints.
_KERAS_EPSILON = 1e-7


def _unit_transform(fn: str, axis: int, mask: Mask, desired: Any, factor: str, scalars: Any, *hypers: Any) -> Any:
    """A per-unit rescaling ``w_unit <- w_unit * desired(n, count) / (1e-7 + n)`` with ``n`` the unit's L2 norm."""

    def op(ws: list[jax.Array], count: jax.Array) -> list[jax.Array]:
        out = []
        for w in ws:
            n = _tree.unit_norms(w, axis)
            out.append(_tree.scaled(w, desired(n, count) / (_KERAS_EPSILON + n)))
        return out

    def check(paths, leaves):
        _tree.check_axis(fn, axis, paths, leaves)

    tx = _param_space.params_transform(fn, op, mask=mask, check=check)
    return _rules.describe(tx, _param_space.unit_rule(factor, axis, scalars, mask, *hypers))


def unit_norm(axis: int = -1, mask: Mask = None) -> optax.GradientTransformationExtraArgs:
    """Rescales every unit's weights to L2 norm 1: Keras' ``UnitNorm`` constraint.

    ``w_unit <- w_unit / (1e-7 + ||w_unit||)`` after every step, with Keras' epsilon
    (``keras.backend.epsilon()``), so a zero unit stays zero. The units are the slices
    along ``axis``, as :func:`max_norm` names them: with ``axis=-1`` (the default) a
    unit is an output neuron of a Flax ``Dense`` kernel ``(in, out)`` or a filter of a
    ``Conv`` kernel. Note the convention: Keras' ``UnitNorm(axis=0)`` names the axis the
    norm runs over, so Keras' default for a ``(in, out)`` kernel is jaxreg's
    ``axis=-1``. Complex leaves count by their modulus.

    Args:
      axis: the axis that indexes the units.
      mask: pytree of bools or callable ``params -> mask``; True where it applies. Every
        selected leaf needs ``axis`` in range: leave out biases and scalars.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    References:
      ``keras.constraints.UnitNorm``; Salimans & Kingma, *Weight normalization*, 2016
      (the reparametrization this constraint imposes as a projection).
    """
    fn = "unit_norm"
    axis = _checks.check_axis_arg(fn, axis)

    def desired(n, count):
        return jnp.ones_like(n)

    factor = "f = 1.0f / (1e-7f + __builtin_sqrtf(ss));"
    return _unit_transform(fn, axis, mask, desired, factor, lambda count: [])


def min_max_norm(
    min_value: chex.Numeric | optax.Schedule = 0.0,
    max_value: chex.Numeric | optax.Schedule = 1.0,
    rate: chex.Numeric | optax.Schedule = 1.0,
    axis: int = -1,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """Keeps every unit's L2 norm in ``[min_value, max_value]``: Keras' ``MinMaxNorm`` constraint.

    With ``n`` a unit's norm, ``w_unit <- w_unit * d / (1e-7 + n)`` where
    ``d = rate * clip(n, min_value, max_value) + (1 - rate) * n``: ``rate=1`` enforces the
    bounds at once, a smaller rate moves the norm part of the way each step (Keras'
    formula, with its epsilon ``1e-7``). The units are the slices along ``axis``, as
    :func:`max_norm` names them; Keras' ``MinMaxNorm(axis=0)`` names the axis the norm
    runs over, so Keras' default for a ``(in, out)`` kernel is jaxreg's ``axis=-1``.
    Complex leaves count by their modulus.

    Args:
      min_value: the smallest allowed norm per unit, >= 0 (float or schedule).
      max_value: the largest allowed norm per unit, >= ``min_value`` (float or schedule).
      rate: the share of the way to the bounds taken per step, in [0, 1] (float or schedule).
      axis: the axis that indexes the units.
      mask: pytree of bools or callable ``params -> mask``; True where it applies. Every
        selected leaf needs ``axis`` in range: leave out biases and scalars.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    References:
      ``keras.constraints.MinMaxNorm``.
    """
    fn = "min_max_norm"
    _checks.check_nonnegative(fn, "min_value", min_value)
    _checks.check_nonnegative(fn, "max_value", max_value)
    _checks.check_nonnegative(fn, "rate", rate)
    lo, hi, r = (_checks.concrete(v) for v in (min_value, max_value, rate))
    if lo is not None and hi is not None and not np.all(lo <= hi):
        raise ValueError(
            f"{fn}: min_value must be <= max_value, got min_value={min_value!r} and max_value={max_value!r}."
        )
    if r is not None and not np.all(r <= 1):
        raise ValueError(f"{fn}: rate must lie in [0, 1], got {rate!r}.")
    axis = _checks.check_axis_arg(fn, axis)

    def desired(n, count):
        low, high, share = (_tree.value_at(v, count) for v in (min_value, max_value, rate))
        low, high, share = (jnp.asarray(v).astype(n.dtype) for v in (low, high, share))
        return share * jnp.clip(n, low, high) + (1 - share) * n

    factor = (
        "const float n = __builtin_sqrtf(ss); const float c = n < @s0 ? @s0 : (n > @s1 ? @s1 : n); "
        "f = (@s2 * c + (1.0f - @s2) * n) / (1e-7f + n);"
    )

    def scalars(count):
        return [_tree.value_at(v, count) for v in (min_value, max_value, rate)]

    return _unit_transform(fn, axis, mask, desired, factor, scalars, min_value, max_value, rate)
