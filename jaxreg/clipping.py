"""Gradient-space clipping: by value, by global norm, by per-leaf norm.

Place these *before* the optimizer. Clipping guards against exploding gradients; it is
not a regularizer of the parameters. Each keeps in its state what PyTorch returns and
optax throws away (the pre-clip norm, the fraction clipped), so a training loop can log
it. Norms accumulate from per-leaf partial sums (one scalar all-reduce on sharded
gradients), in float32 for float32, bf16 and f16 gradients and in float64 for float64
ones; integer leaves are never changed. Non-finite gradients propagate, as in optax and PyTorch: an ``inf``
norm scales finite entries to 0 and ``inf`` entries to NaN; combine with
``optax.apply_if_finite`` to skip such steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from jaxreg import _checks, _param_space, _rules, _tree
from jaxreg.masks import Mask

__all__ = [
    "AdaptiveClipState",
    "ClipByNormState",
    "ClipState",
    "adaptive_grad_clip",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "global_norm",
]


class ClipState(NamedTuple):
    """State of :func:`clip` and :func:`clip_by_block_rms`."""

    count: jax.Array  # steps taken, for a schedule of max_delta (threshold)
    clipped_fraction: jax.Array  # fraction of gradient entries (clip_by_block_rms: leaves) clipped on the last step


class ClipByNormState(NamedTuple):
    """State of :func:`clip_by_global_norm` and :func:`clip_by_leaf_norm`."""

    count: jax.Array  # steps taken, for a schedule of max_norm
    norm: Any  # pre-clip norm of the last step: a scalar, or one per leaf


class AdaptiveClipState(NamedTuple):
    """State of :func:`adaptive_grad_clip`."""

    count: jax.Array  # steps taken, for a schedule of clipping
    clipped_fraction: jax.Array  # fraction of the selected units clipped on the last step


def _selected(
    fn: str, mask: Any, tree: Any, hypers: tuple[tuple[str, Any], ...] = (), real_only: bool = False
) -> tuple[list[Any], list[int]]:
    """The leaves of ``tree`` (updates, or params at ``init``) and the indices of those the
    clip changes: selected by ``mask``, floating or complex (refused with ``real_only``);
    an array in ``hypers`` must broadcast to each of them."""
    paths, leaves, picked = _tree.acted_on(fn, mask, tree, real_only=real_only)
    for name, value in hypers:
        for i in picked:
            _tree.check_broadcast(fn, name, paths[i], value, leaves[i])
    return leaves, picked


def _replaced(updates: Any, leaves: list[Any], picked: list[int], new: list[jax.Array]) -> Any:
    """``updates`` with its leaves at ``picked`` replaced by ``new``, the others unchanged."""
    out = list(leaves)
    for i, x in zip(picked, new):
        out[i] = x
    return _tree.rebox_like(updates, out)


def clip(max_delta: chex.Numeric | optax.Schedule, mask: Mask = None) -> optax.GradientTransformation:
    """Clips every gradient entry into ``[-max_delta, max_delta]``.

    Same numbers as ``optax.clip`` and ``torch.nn.utils.clip_grad_value_``; its state
    also records ``clipped_fraction``, the share of the selected entries that hit the
    bound on the last step (a cheap signal that ``max_delta`` is too tight). NaN stays
    NaN, ``inf`` becomes ``max_delta``. Real gradients only: a complex one raises a
    ``TypeError`` (leave it out with ``mask``).

    Args:
      max_delta: the bound L >= 0 (float, array or schedule).
      mask: pytree of bools or callable ``updates -> mask``; True where it clips.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ClipState`.
    """
    fn = "clip"
    _checks.check_nonnegative(fn, "max_delta", max_delta)
    hypers = (("max_delta", max_delta),)

    def init_fn(params: optax.Params) -> ClipState:
        _selected(fn, mask, params, hypers, real_only=True)
        return ClipState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))

    def update_fn(
        updates: optax.Updates, state: ClipState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ClipState]:
        del params
        bound = jnp.asarray(_tree.value_at(max_delta, state.count))
        leaves, picked = _selected(fn, mask, updates, hypers, real_only=True)
        gs = [_tree.as_array(leaves[i]) for i in picked]

        def in_dtype(g):  # the bound as the gradient's dtype: bf16 stays bf16
            return bound.astype(g.dtype)

        hit = sum((jnp.sum(jnp.abs(g) > in_dtype(g), dtype=jnp.float32) for g in gs), jnp.zeros([], jnp.float32))
        total = max(sum(jnp.size(g) for g in gs), 1)
        clipped = [jnp.clip(g, -in_dtype(g), in_dtype(g)) for g in gs]
        return _replaced(updates, leaves, picked, clipped), ClipState(optax.safe_increment(state.count), hit / total)

    rule = _rules.Rule(
        code="@c0 += (u > @s0) | (u < -@s0); " + _rules.clip_code("u", "-@s0", "@s0"),
        scalars=lambda state, norm: [_tree.value_at(max_delta, state.count)],
        advance=lambda state, slots, norm: state._replace(count=optax.safe_increment(state.count)),
        record=lambda state, fractions: state._replace(clipped_fraction=fractions[0]),
        mask=mask,
    )
    tx = optax.GradientTransformation(init_fn, update_fn)
    return _rules.describe(tx, rule if _rules.is_scalar(max_delta) else None)


def _clip_coefficient(norm: jax.Array, max_norm: Any, eps: float) -> jax.Array:
    # PyTorch's rule, computed its way (``scalar / tensor`` is reciprocal-then-multiply
    # there): coef = max_norm * (1 / (norm + eps)), clamped to 1. With eps = 0 and a zero
    # norm the coefficient is 1: zero gradients stay zero, no NaN, also in derivatives. It
    # is computed in the norm's dtype (float64 for float64 gradients).
    bound = jnp.asarray(max_norm).astype(norm.dtype)
    denominator = norm + eps
    nonzero = denominator != 0  # NaN passes: a NaN norm makes every update NaN, as in PyTorch
    coefficient = jnp.minimum(bound * jnp.reciprocal(jnp.where(nonzero, denominator, 1)), 1.0)
    return jnp.where(nonzero, coefficient, jnp.ones_like(coefficient))


def _scale_by_coefficient(g: jax.Array, norm: jax.Array, max_norm: Any, eps: float) -> jax.Array:
    return _tree.scaled(g, _clip_coefficient(norm, max_norm, eps)).astype(g.dtype)


def _check_norm_args(fn: str, max_norm: Any, norm_type: Any, eps: Any) -> float:
    _checks.check_positive(fn, "max_norm", max_norm)
    _checks.check_nonnegative(fn, "eps", eps)
    return _checks.check_norm_type(fn, norm_type)


def clip_by_global_norm(
    max_norm: chex.Numeric | optax.Schedule, norm_type: float | str = 2.0, eps: float = 0.0, mask: Mask = None
) -> optax.GradientTransformation:
    """Rescales all gradients together so that their global norm is at most ``max_norm``.

    With ``n`` the ``norm_type``-norm of all gradient entries together, every gradient
    is multiplied by ``min(1, max_norm / (n + eps))``. With ``eps=1e-6`` this is
    ``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)``: the same formula,
    evaluated the same way, so the result is bit for bit PyTorch's for ``norm_type=inf``
    and within a few ulps for p-norms (the sums run in a different order). With
    ``eps=0`` it matches ``optax.clip_by_global_norm`` to an ulp (optax supports only the
    2-norm and forgets ``n``). The state keeps ``n`` of the last step, before clipping, as the
    value ``clip_grad_norm_`` returns. All-zero gradients give zero updates. With
    ``mask``, ``n`` is the norm of the selected gradients only, and only they are
    rescaled. Complex gradients count by their modulus, ``|z|^2 = re^2 + im^2``.

    Args:
      max_norm: largest allowed global norm, > 0 (float, array or schedule).
      norm_type: the p of the p-norm: any p >= 1, or ``inf`` (max absolute entry).
      eps: added to the norm in the denominator, >= 0.
      mask: pytree of bools or callable ``updates -> mask``; True where it clips.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ClipByNormState`.

    References:
      Pascanu et al., *On the difficulty of training recurrent neural networks*, 2013.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> tx = jaxreg.clip_by_global_norm(1.0)
      >>> grads = {"w": jnp.array([3.0, 4.0])}
      >>> updates, state = tx.update(grads, tx.init(grads))
      >>> updates["w"], state.norm
      (Array([0.6, 0.8], dtype=float32), Array(5., dtype=float32))
    """
    fn = "clip_by_global_norm"
    p = _check_norm_args(fn, max_norm, norm_type, eps)

    def init_fn(params: optax.Params) -> ClipByNormState:
        leaves, picked = _selected(fn, mask, params)
        norm_dtype = _tree.widest_real([leaves[i] for i in picked])
        return ClipByNormState(jnp.zeros([], jnp.int32), jnp.zeros([], norm_dtype))

    def update_fn(
        updates: optax.Updates, state: ClipByNormState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ClipByNormState]:
        del params
        bound = _tree.value_at(max_norm, state.count)
        leaves, picked = _selected(fn, mask, updates)
        gs = [_tree.as_array(leaves[i]) for i in picked]
        norm = _tree.global_norm(gs, p)
        clipped = [_scale_by_coefficient(g, norm, bound, eps) for g in gs]
        new_state = ClipByNormState(optax.safe_increment(state.count), norm.astype(state.norm.dtype))
        return _replaced(updates, leaves, picked, clipped), new_state

    # The fused pass sums the squares of the leaves the mask selects.
    rule = _rules.Rule(
        code="u = u * @s0;",
        scalars=lambda state, norm: [_clip_coefficient(norm, _tree.value_at(max_norm, state.count), eps)],
        advance=lambda state, slots, norm: ClipByNormState(optax.safe_increment(state.count), norm),
        mask=mask,
        global_norm=True,
    )
    tx = optax.GradientTransformation(init_fn, update_fn)
    return _rules.describe(tx, rule if p == 2.0 else None)


def clip_by_leaf_norm(
    max_norm: chex.Numeric | optax.Schedule, norm_type: float | str = 2.0, eps: float = 0.0, mask: Mask = None
) -> optax.GradientTransformation:
    """Rescales each gradient tensor on its own so that its norm is at most ``max_norm``.

    Like :func:`clip_by_global_norm` applied to every leaf separately (PyTorch:
    ``clip_grad_norm_`` called once per parameter). The state keeps each leaf's
    pre-clip norm, in a tree with the gradients' structure: that of every floating or
    complex leaf, also those ``mask`` leaves unclipped (0 for integer leaves).

    Args:
      max_norm: largest allowed norm per leaf, > 0 (float, array or schedule).
      norm_type: the p of the p-norm: any p >= 1, or ``inf``.
      eps: added to the norm in the denominator, >= 0.
      mask: pytree of bools or callable ``updates -> mask``; True where it clips.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ClipByNormState`.
    """
    fn = "clip_by_leaf_norm"
    p = _check_norm_args(fn, max_norm, norm_type, eps)

    def init_fn(params: optax.Params) -> ClipByNormState:
        _selected(fn, mask, params)
        norms = jax.tree.map(lambda x: jnp.zeros([], _tree.real_dtype(jnp.result_type(x))), _tree.unbox(params))
        return ClipByNormState(jnp.zeros([], jnp.int32), norms)

    def update_fn(
        updates: optax.Updates, state: ClipByNormState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ClipByNormState]:
        del params
        bound = _tree.value_at(max_norm, state.count)
        leaves, picked = _selected(fn, mask, updates)
        _, recorded, _ = _tree.leaves_with_paths(state.norm)
        norms = [
            _tree.global_norm([_tree.as_array(g)], p).astype(n.dtype) if _tree.is_inexact(g) else n
            for g, n in zip(leaves, recorded)
        ]
        clipped = [_scale_by_coefficient(_tree.as_array(leaves[i]), norms[i], bound, eps) for i in picked]
        new_state = ClipByNormState(optax.safe_increment(state.count), _tree.rebox_like(state.norm, norms))
        return _replaced(updates, leaves, picked, clipped), new_state

    def advance(state, slots, norms):
        leaf_norms = jax.tree.unflatten(jax.tree.structure(state.norm), list(norms))
        return ClipByNormState(optax.safe_increment(state.count), leaf_norms)

    rule = _rules.Rule(
        code="u = u * @s0;",
        scalars=lambda state, norms: [_clip_coefficient(norms, _tree.value_at(max_norm, state.count), eps)],
        advance=advance,
        leaf_norms=True,
        mask=mask,
    )
    return _rules.describe(optax.GradientTransformation(init_fn, update_fn), rule if p == 2.0 else None)


def global_norm(tree: Any, norm_type: float | str = 2.0) -> jax.Array:
    """The ``norm_type``-norm of all entries of ``tree`` together.

    ``(sum_leaves sum_i |x_i|^p)^(1/p)``, or ``max |x_i|`` for ``p = inf``: the value
    ``torch.nn.utils.get_total_norm(tensors, norm_type)`` returns and the value
    :func:`clip_by_global_norm` keeps in its state (``optax.global_norm`` for p = 2).
    Each leaf reduces in its real compute dtype (float32 for bf16/f16, float64 for
    float64) and the per-leaf partial sums are combined in the widest of them, so a
    sharded tree needs one scalar all-reduce. Integer leaves are left out; complex
    entries count by their modulus. An empty tree has norm 0.

    Args:
      tree: a pytree of arrays (NNX ``State`` and ``Variable`` boxes included).
      norm_type: the p of the p-norm: any p >= 1, or ``inf`` (also ``"inf"``).

    Returns:
      A scalar array.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])})
      Array(5., dtype=float32)
    """
    p = _checks.check_norm_type("global_norm", norm_type)
    _, leaves, _ = _tree.leaves_with_paths(tree)
    return _tree.global_norm([_tree.as_array(x) for x in leaves if _tree.is_inexact(x)], p)


def clip_by_block_rms(threshold: chex.Numeric | optax.Schedule, mask: Mask = None) -> optax.GradientTransformation:
    """Rescales each gradient leaf (block) so that its root mean square is at most ``threshold``.

    ``g <- g / max(1, rms(g) / threshold)`` with ``rms(g) = sqrt(mean |g_i|^2)`` over the
    entries of the leaf: ``optax.clip_by_block_rms``, with ``mask=`` and schedules.
    Unlike :func:`clip_by_leaf_norm` the bound does not grow with the size of the leaf.
    Complex gradients count by their modulus. The state's ``clipped_fraction`` is the
    share of the selected leaves rescaled on the last step.

    Args:
      threshold: the largest allowed RMS per leaf, > 0 (float or schedule).
      mask: pytree of bools or callable ``updates -> mask``; True where it clips.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ClipState`.
    """
    fn = "clip_by_block_rms"
    _checks.check_positive(fn, "threshold", threshold)

    def init_fn(params: optax.Params) -> ClipState:
        _selected(fn, mask, params, (("threshold", threshold),))
        return ClipState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))

    def update_fn(
        updates: optax.Updates, state: ClipState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ClipState]:
        del params
        bound = _tree.value_at(threshold, state.count)
        leaves, picked = _selected(fn, mask, updates, (("threshold", threshold),))
        clipped, hit = [], jnp.zeros([], jnp.float32)
        for i in picked:
            g = _tree.as_array(leaves[i])
            rms = _tree.safe_root(_tree.leaf_power_sum(g, 2.0) / max(g.size, 1), 2.0)
            denominator = jnp.maximum(1.0, rms / _tree.real_for(bound, g))
            clipped.append(_tree.scaled(g, 1.0 / denominator).astype(g.dtype))
            hit = hit + (denominator > 1).astype(jnp.float32)
        new_state = ClipState(optax.safe_increment(state.count), hit / max(len(picked), 1))
        return _replaced(updates, leaves, picked, clipped), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _agc_norms(x: jax.Array) -> jax.Array:
    """The L2 norm of each unit as ``optax.adaptive_grad_clip`` cuts units (by rank), broadcast to ``x``."""
    sq = _tree._abs_sq(x)
    if x.ndim <= 1 or jnp.squeeze(x).ndim <= 1:
        axes = tuple(range(x.ndim))
    elif x.ndim in (2, 3):
        axes = (0,)
    else:
        axes = tuple(range(x.ndim - 1))
    return _tree.safe_root(jnp.sum(sq, axis=axes, keepdims=True), 2.0)


def adaptive_grad_clip(
    clipping: chex.Numeric | optax.Schedule, eps: float = 1e-3, mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Adaptive gradient clipping (AGC): caps each unit's gradient norm relative to its weights' norm.

    For every unit ``i`` (a slice of a leaf), with ``G_i`` its gradient and ``W_i`` its
    weights::

        G_i <- G_i * (clipping * max(||W_i||, eps) / ||G_i||)   if ||G_i|| >= clipping * max(||W_i||, eps)
        G_i <- G_i                                               otherwise

    (Brock et al.'s NFNets recipe; ``||G_i||`` is floored at 1e-6 in the division.)
    Same numbers as ``optax.adaptive_grad_clip(clipping, eps)``, and units cut as optax
    cuts them: a scalar or vector leaf is one unit; a rank-2 or rank-3 kernel (``(in,
    out)``, multi-head) has one unit per slice along its last axes, the norm running
    over axis 0; a rank-4/5 conv kernel (``HWIO``/``DHWIO``) has one unit per output
    channel, the norm running over all other axes. Leaves of higher rank raise; leave
    them out with ``mask``. The state records ``clipped_fraction``, the share of the
    selected units clipped on the last step (what to log to see whether ``clipping``
    bites). Needs ``params`` in ``update``. Real values only.

    Args:
      clipping: the largest allowed ratio of a unit's gradient norm to its weight norm,
        > 0 (float or schedule); the paper uses 0.01 to 0.16, smaller for larger batches.
      eps: the floor of the weight norm, >= 0, so that zero-initialized units can move.
      mask: pytree of bools or callable ``params -> mask``; True where it clips. The
        paper leaves out the final classifier layer.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with an :class:`AdaptiveClipState`.

    References:
      Brock et al., *High-Performance Large-Scale Image Recognition Without
      Normalization*, ICML 2021.
    """
    fn = "adaptive_grad_clip"
    _checks.check_positive(fn, "clipping", clipping)
    _checks.check_nonnegative(fn, "eps", eps)

    def select(params: Any, *others: Any) -> tuple[list[Any], list[int]]:
        paths, leaves, picked = _tree.acted_on(fn, mask, params, *others, real_only=True)
        for i in picked:
            if jnp.ndim(leaves[i]) > 5:
                raise ValueError(
                    f"{fn}: params{jax.tree_util.keystr(paths[i])} has rank {jnp.ndim(leaves[i])} (shape "
                    f"{jnp.shape(leaves[i])}), but units are defined for ranks 0 to 5; leave it out with mask=."
                )
        return leaves, picked

    def init_fn(params: optax.Params) -> AdaptiveClipState:
        select(params)
        return AdaptiveClipState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))

    def update_fn(
        updates: optax.Updates, state: AdaptiveClipState, params: optax.Params | None = None, **extra_args: Any
    ) -> tuple[optax.Updates, AdaptiveClipState]:
        del extra_args
        if params is None:
            raise _param_space.needs_params_error(fn)
        u_leaves = _tree.match_tree(fn, "updates", updates, params, broadcast=False)
        p_leaves, picked = select(params, u_leaves)
        ratio = _tree.value_at(clipping, state.count)
        out, hit, units = list(u_leaves), jnp.zeros([], jnp.float32), 0
        for i in picked:
            g, w = _tree.as_array(u_leaves[i]), _tree.as_array(p_leaves[i])
            g_norm = _agc_norms(g)
            w_norm = _agc_norms(w).astype(g_norm.dtype)
            bound = _tree.real_for(ratio, g).astype(g_norm.dtype) * jnp.maximum(w_norm, eps)
            over = g_norm >= bound
            factor = jnp.where(over, bound / jnp.maximum(g_norm, 1e-6), 1)
            out[i] = _tree.scaled(g, factor).astype(g.dtype)
            hit = hit + jnp.sum(over, dtype=jnp.float32)
            units += g_norm.size
        fraction = hit / max(units, 1)
        return _tree.rebox_like(updates, out), AdaptiveClipState(optax.safe_increment(state.count), fraction)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
