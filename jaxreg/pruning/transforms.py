"""Pruning inside ``optax.chain``: transforms that hold pruned weights at exactly zero.

Both are parameter-space transforms (docs/architecture.md, "Two spaces, one contract"): place them *last* in the
chain, after the optimizer and any decay or prox. Their updates for a pruned weight are
``-p``, so ``optax.apply_updates`` lands it on ``p + (-p) = 0.0`` exactly, whatever the
optimizer, AdamW's decoupled decay or a prox did before (they would otherwise move it
off zero). Kept weights get the incoming updates unchanged. The pruning mask lives in
the transform's state, so it is saved with the optimizer state, as in jaxpruner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxreg import _checks, _param_space, _rules, _tree
from jaxreg.masks import Mask
from jaxreg.pruning import _select
from jaxreg.pruning.masks import check_keep_shapes, check_sparsity, match_keep, rank_keep, scores_for
from jaxreg.pruning.scores import Score

__all__ = ["KeepPrunedState", "PruneState", "keep_pruned", "prune_during_training"]


class KeepPrunedState(NamedTuple):
    """State of :func:`keep_pruned`."""

    keep: Any  # the pruning mask: a pytree of bool arrays, True = keep
    inner: optax.OptState = optax.EmptyState()  # the wrapped optimizer's state, if any


class PruneState(NamedTuple):
    """State of :func:`prune_during_training`."""

    count: jax.Array  # steps taken, for the sparsity schedule
    sparsity: jax.Array  # float32: the sparsity the current mask was computed for
    keep: Any  # the pruning mask: a pytree of bool arrays, True = keep
    inner: optax.OptState = optax.EmptyState()  # the wrapped optimizer's state, if any


def _inexact(x: Any) -> bool:
    """Float or complex: the leaves a mask holds (integer leaves are never pruned)."""
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _hold_pruned(us: Sequence[Any], ps: Sequence[Any], keeps: Sequence[Any]) -> list[Any]:
    """``where(keep, u, -p)`` on float and complex leaves: pruned weights land on exact zeros."""
    out = []
    for u, p, k in zip(us, ps, keeps):
        if _inexact(p) and _inexact(u):
            u = jnp.asarray(u)
            out.append(jnp.where(k, u, (-jnp.asarray(p)).astype(u.dtype)))
        else:
            out.append(u)
    return out


def _check_inner(fn: str, inner: Any) -> optax.GradientTransformationExtraArgs | None:
    if inner is None:
        return None
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(f"{fn}: inner must be an optax.GradientTransformation, got {inner!r}.")
    return optax.with_extra_args_support(inner)


def _inner_updates(
    fn: str,
    inner: optax.GradientTransformationExtraArgs | None,
    u_leaves: list[Any],
    treedef: Any,
    state: optax.OptState,
    params: Any,
    keeps: Sequence[Any],
    extra_args: dict[str, Any],
) -> tuple[list[Any], optax.OptState]:
    """The wrapped optimizer's updates, as leaves, for gradients with pruned entries zeroed."""
    if inner is None:
        return u_leaves, state
    masked = [jnp.where(k, g, jnp.zeros((), jnp.result_type(g))) if _inexact(g) else g for g, k in zip(u_leaves, keeps)]
    updates, state = inner.update(treedef.unflatten(masked), state, params, **extra_args)
    return _tree.match_tree(fn, "updates", updates, params, broadcast=False), state


def _aligned(fn: str, updates: Any, params: Any, keep: Any) -> tuple[list, list, list, list, Any]:
    """Paths, params, updates and keep masks as aligned leaf lists, plus the treedef."""
    if params is None:
        raise _param_space.needs_params_error(fn)
    paths, p_leaves, treedef = _tree.leaves_with_paths(params)
    u_leaves = _tree.match_tree(fn, "updates", updates, params, broadcast=False)
    keeps = match_keep(fn, keep, params)
    return paths, p_leaves, u_leaves, keeps, treedef


def _keep_leaves(fn: str, keep: Any, params: Any) -> list[jax.Array]:
    paths, leaves, _ = _tree.leaves_with_paths(params)
    keeps = match_keep(fn, keep, params)
    check_keep_shapes(fn, paths, leaves, keeps)
    return [jnp.asarray(k).astype(jnp.bool_) for k in keeps]


def keep_pruned(
    keep: Any | Callable[[optax.Params], Any], inner: optax.GradientTransformation | None = None
) -> optax.GradientTransformationExtraArgs:
    """Keeps pruned weights at exactly zero: place it last in the chain.

    For each weight ``p`` with incoming update ``u`` it returns ``u`` where
    ``keep`` is True and ``-p`` where it is False, so that after
    ``optax.apply_updates`` a pruned weight is ``0.0`` (exactly, for finite ``p``) and
    a kept one is ``p + u``. Pruned weights therefore stay zero through any optimizer,
    decoupled weight decay or prox placed before it. PyTorch gets the same effect from
    ``torch.nn.utils.prune``'s forward pre-hook (``weight = weight_orig *
    weight_mask``), which leaves ``weight_orig`` to drift; jaxpruner multiplies the
    params by the mask after each update.

    Placed last in a chain, it cannot hide the pruned gradients from the optimizer
    before it (its moments still see them, which is harmless since the weights are
    reset every step). To zero them, as PyTorch's masked ``weight`` does for
    ``weight_orig.grad``, wrap the optimizer instead: ``keep_pruned(keep,
    inner=optax.adamw(...))`` gives ``inner`` the gradients with pruned entries set to
    zero, then holds its updates as above (jaxpruner's ``wrap_optax``).

    Without ``inner`` it fuses into :func:`jaxreg.chain`'s one-pass step (before any
    ``max_norm``-like member), which reads the mask beside the gradients and moments.

    The first update also zeroes weights that were pruned but not yet zero; apply
    :func:`~jaxreg.pruning.masks.apply_mask` to the params first if the first forward
    pass should already see the pruned model.

    Args:
      keep: the pruning mask (a pytree of bools with the params' structure, each leaf
        of the leaf's shape or broadcastable to it; True = keep), or a callable
        ``params -> keep`` evaluated once on the params given to ``init`` (e.g.
        ``lambda p: magnitude_mask(p, 0.9)`` for one-shot pruning).
      inner: an optimizer (any ``optax.GradientTransformation``) to wrap: it gets the
        gradients with the pruned entries zeroed. None: act on the incoming updates.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`KeepPrunedState`
      holding the mask (and ``inner``'s state); ``update`` needs ``params``.
    """
    fn = "keep_pruned"
    wrapped = _check_inner(fn, inner)

    def init_fn(params: optax.Params) -> KeepPrunedState:
        unboxed = _tree.unbox(params)
        tree = keep(unboxed) if callable(keep) else keep
        _, _, treedef = _tree.leaves_with_paths(unboxed)
        inner_state = optax.EmptyState() if wrapped is None else wrapped.init(params)
        return KeepPrunedState(keep=treedef.unflatten(_keep_leaves(fn, tree, unboxed)), inner=inner_state)

    def update_fn(
        updates: optax.Updates, state: KeepPrunedState, params: optax.Params | None = None, **extra_args: Any
    ) -> tuple[optax.Updates, KeepPrunedState]:
        _, p_leaves, u_leaves, keeps, treedef = _aligned(fn, updates, params, state.keep)
        u_leaves, inner_state = _inner_updates(fn, wrapped, u_leaves, treedef, state.inner, params, keeps, extra_args)
        return _tree.rebox_like(updates, _hold_pruned(u_leaves, p_leaves, keeps)), state._replace(inner=inner_state)

    # Without ``inner`` it is element-wise: ``jaxreg.chain`` fuses it, reading the mask.
    rule = _rules.Rule(
        code="u = @k0[i] ? u : -wi;",
        scalars=lambda state, norm: [],
        advance=lambda state, slots, norm: state,
        inputs=lambda state: [state.keep],
        param_space=True,
    )
    return _rules.describe(optax.GradientTransformationExtraArgs(init_fn, update_fn), rule if wrapped is None else None)


def prune_during_training(
    score: Score,
    sparsity_schedule: optax.Schedule | float,
    scope: str = "leaf",
    where: Mask = None,
    inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Prunes on a schedule while training, holding pruned weights at zero in between.

    At step ``t`` it evaluates ``s_t = sparsity_schedule(t)``. When ``s_t`` differs from
    the sparsity of the mask in its state, it recomputes the mask: the weights the step
    would produce, ``w = p + u`` with the already pruned ones set to zero, are scored by
    ``score`` and the lowest ``round(s_t * n)`` are pruned (per leaf or over the tree,
    with the tie rule of :func:`~jaxreg.pruning.masks.magnitude_mask`). Weights already
    pruned rank below all others whatever their score, so a weight once pruned stays
    pruned while the sparsity rises (as in Zhu & Gupta). Then, every step,
    it returns ``u`` for kept weights and ``-p`` for pruned ones, as
    :func:`keep_pruned`. The test is a ``lax.cond`` inside the compiled step: no Python
    branching, no recompilation, and under ``vmap`` both branches run.

    This is Zhu & Gupta's gradual pruning with :func:`polynomial_sparsity`, and one-shot
    pruning with :func:`constant_sparsity`. jaxpruner's updaters do the same with a
    mutable object wrapping the optimizer; TensorFlow Model Optimization with Keras
    callbacks. With ``inner=`` it wraps the optimizer, as :func:`keep_pruned` does:
    ``inner`` sees the gradients of the weights pruned so far set to zero.

    Args:
      score: ``params -> per-weight scores`` (e.g. ``magnitude_score``), evaluated on
        ``w`` inside the compiled step.
      sparsity_schedule: an ``optax.Schedule`` of the step count giving a sparsity in
        ``[0, 1]``, or a number (prune once, at the first step).
      scope: ``"leaf"`` (each leaf loses its fraction) or ``"global"``.
      where: selector; True where pruning is considered. Integer leaves and scalars are
        never pruned.
      inner: an optimizer to wrap: it gets the gradients with the pruned entries
        zeroed. None: act on the incoming updates.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a :class:`PruneState` (step
      count, current sparsity, mask, ``inner``'s state); place it last in the chain;
      ``update`` needs ``params``.

    References:
      Zhu & Gupta, *To prune, or not to prune*, 2017 (arXiv:1710.01878).
    """
    fn = "prune_during_training"
    if not callable(score):
        raise TypeError(f"{fn}: score must be a callable params -> scores, got {score!r}.")
    _checks.check_scope(fn, scope)
    if not callable(sparsity_schedule):
        check_sparsity(fn, sparsity_schedule, name="sparsity_schedule")
    wrapped = _check_inner(fn, inner)

    def init_fn(params: optax.Params) -> PruneState:
        unboxed = _tree.unbox(params)
        _tree.resolve_mask(fn, where, unboxed, arg="where")
        keep = jax.tree.map(lambda x: jnp.ones_like(x, dtype=jnp.bool_), unboxed)
        inner_state = optax.EmptyState() if wrapped is None else wrapped.init(params)
        zero = jnp.zeros([], jnp.float32)
        return PruneState(count=jnp.zeros([], jnp.int32), sparsity=zero, keep=keep, inner=inner_state)

    def update_fn(
        updates: optax.Updates, state: PruneState, params: optax.Params | None = None, **extra_args: Any
    ) -> tuple[optax.Updates, PruneState]:
        paths, p_leaves, u_leaves, old, treedef = _aligned(fn, updates, params, state.keep)
        u_leaves, inner_state = _inner_updates(fn, wrapped, u_leaves, treedef, state.inner, params, old, extra_args)
        sparsity = jnp.asarray(_tree.value_at(sparsity_schedule, state.count)).astype(jnp.float32)

        def recompute() -> list[jax.Array]:
            # The params this step lands on, pruned ones at zero: what the score sees.
            ws = [
                jnp.where(k, (p + u).astype(jnp.result_type(p)), jnp.zeros((), jnp.result_type(p)))
                if _inexact(p) and _inexact(u)
                else p
                for u, p, k in zip(u_leaves, p_leaves, old)
            ]
            w_tree = treedef.unflatten(ws)
            scores = scores_for(fn, score, w_tree, paths, ws)
            # Pruned weights rank below all others (the floor): once pruned, pruned while s rises.
            keep = rank_keep(
                fn, w_tree, ("sparsity", sparsity), scope, where, _select.order_key, lambda i, _: scores[i], floor=old
            )
            return [k.astype(jnp.bool_) for k in jax.tree.leaves(keep)]

        def unchanged() -> list[jax.Array]:
            return [jnp.broadcast_to(k, jnp.shape(p)) for k, p in zip(old, p_leaves)]

        keeps = lax.cond(sparsity != state.sparsity, recompute, unchanged)
        new_state = PruneState(
            count=optax.safe_increment(state.count), sparsity=sparsity, keep=treedef.unflatten(keeps), inner=inner_state
        )
        return _tree.rebox_like(updates, _hold_pruned(u_leaves, p_leaves, keeps)), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
