"""The contract every parameter-space transform follows (DESIGN.md, principle 4).

A parameter-space transform sits after the optimizer in ``optax.chain``. It reads the
current ``params`` and the optimizer's ``updates`` ``u`` and returns new updates ``u2``
with ``optax.apply_updates(params, u2) == op(params + u)`` on the leaves its mask
selects; elsewhere ``u2 == u``. Exact zeros produced by ``op`` stay exactly zero after
``apply_updates``, because ``p + (0 - p) == 0`` in floating point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg import _rules, _tree

# op(selected_updates, selected_params, count, *per_leaf_values) -> new selected updates.
UpdatesOp = Callable[..., list[jax.Array]]
# op(selected_new_params, count, *per_leaf_values) -> projected / shrunk new params.
ParamsOp = Callable[..., list[jax.Array]]
LeafCheck = Callable[[Sequence[_tree.KeyPath], Sequence[jax.Array]], None]


class StepCountState(NamedTuple):
    """State of a parameter-space transform."""

    count: jax.Array  # steps taken, for learning-rate and strength schedules


def land_within(p: jax.Array, d: jax.Array, lower: Any, upper: Any) -> jax.Array:
    """Nudges the update ``d`` by one ulp where ``p + d`` would round outside ``[lower, upper]``.

    ``p + (z - p)`` is ``z`` only up to a rounding, and for a hard constraint that
    rounding must not leave the set: without this, about a fifth of the entries a box
    clips would land one ulp outside it after ``optax.apply_updates``.
    """
    dtype = p.dtype
    lo, hi = jnp.asarray(lower).astype(dtype), jnp.asarray(upper).astype(dtype)
    landed = p + d
    down = jnp.nextafter(d, jnp.full_like(d, -jnp.inf))
    up = jnp.nextafter(d, jnp.full_like(d, jnp.inf))
    return jnp.where(landed > hi, down, jnp.where(landed < lo, up, d))


def needs_params_error(fn: str) -> ValueError:
    """The error raised when a transform that reads params is updated without them."""
    return ValueError(
        f"{fn}: this transform reads the parameters, but update() got params=None; "
        "call tx.update(updates, state, params) (optax.chain and nnx.Optimizer pass "
        "them on)."
    )


def updates_transform(
    fn: str,
    op: UpdatesOp,
    *,
    mask: Any = None,
    check: LeafCheck | None = None,
    per_leaf: Sequence[tuple[str, Any]] = (),
) -> optax.GradientTransformationExtraArgs:
    """A transform that rewrites the updates of the selected leaves, reading params.

    Args:
      fn: public name of the transform, used in error messages.
      op: maps the selected updates, the selected params and the step count to the
        new selected updates.
      mask: pytree of bools or callable ``params -> mask``; True where ``op`` applies.
      check: raises on selected leaves that ``op`` cannot handle (e.g. an axis out of
        range); called at ``init`` and when tracing ``update``.
      per_leaf: ``(name, value)`` pairs of hyperparameters given as one value or as a
        tree with the params' structure; ``op`` gets the selected leaves of each as
        extra list arguments.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a ``StepCountState``.
    """

    def select(params: Any) -> tuple[list[bool], list[jax.Array]]:
        paths, leaves, _ = _tree.leaves_with_paths(params)
        selected = _tree.resolve_mask(fn, mask, params)
        if check is not None:
            check(
                [p for p, s in zip(paths, selected) if s],
                [x for x, s in zip(leaves, selected) if s],
            )
        return selected, leaves

    def init_fn(params: optax.Params) -> StepCountState:
        select(params)
        for name, value in per_leaf:  # a bound tree of the wrong shape fails here, not at step 1
            _tree.match_tree(fn, name, value, params)
        return StepCountState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates,
        state: StepCountState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, StepCountState]:
        del extra_args
        if params is None:
            raise needs_params_error(fn)
        selected, p_leaves = select(params)
        u_leaves = _tree.match_tree(fn, "updates", updates, params, broadcast=False)
        picked = [i for i, s in enumerate(selected) if s]
        extras = [_tree.match_tree(fn, name, value, params) for name, value in per_leaf]
        new = op(
            [u_leaves[i] for i in picked],
            [p_leaves[i] for i in picked],
            state.count,
            *[[column[i] for i in picked] for column in extras],
        )
        out = list(u_leaves)
        for i, u2 in zip(picked, new):
            out[i] = u2.astype(u_leaves[i].dtype)
        return _tree.rebox_like(updates, out), StepCountState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def params_transform(
    fn: str,
    op: ParamsOp,
    *,
    mask: Any = None,
    check: LeafCheck | None = None,
    per_leaf: Sequence[tuple[str, Any]] = (),
    bounded: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """A transform that maps the new params ``w = p + u`` through ``op`` (prox, projection).

    The new params are formed in the params' dtype, as ``optax.apply_updates`` would,
    and the returned updates are ``op(w) - p``. With ``bounded=True`` the first two
    ``per_leaf`` entries are the lower and upper bounds of a hard constraint, and the
    updates are nudged (:func:`land_within`) so that the applied params satisfy it.
    """

    def to_updates(us: list[jax.Array], ps: list[jax.Array], count: jax.Array, *extras: Any) -> list[jax.Array]:
        ws = [(p + u).astype(p.dtype) for u, p in zip(us, ps)]
        ds = [w2.astype(p.dtype) - p for w2, p in zip(op(ws, count, *extras), ps)]
        if bounded:
            ds = [land_within(p, d, lo, hi) for p, d, lo, hi in zip(ps, ds, extras[0], extras[1])]
        return ds

    return updates_transform(fn, to_updates, mask=mask, check=check, per_leaf=per_leaf)


def count_rule(
    code: str, scalars: Callable[[jax.Array], list[Any]], mask: Any, *hypers: Any, **rule: Any
) -> _rules.Rule | None:
    """The fused-pass :class:`~jaxreg._rules.Rule` of a transform with a ``StepCountState``.

    ``scalars(count)`` gives the values of ``@s0, ...`` at this step; ``rule`` holds
    further :class:`~jaxreg._rules.Rule` fields. None (no fused form) unless every
    hyperparameter in ``hypers`` is one value for all leaves.
    """
    if not all(_rules.is_scalar(h) for h in hypers):
        return None
    return _rules.Rule(
        code=code,
        scalars=lambda state, norm: scalars(state.count),
        advance=lambda state, slots, norm: StepCountState(optax.safe_increment(state.count)),
        mask=mask,
        **rule,
    )


def params_rule(
    op: str,
    scalars: Callable[[jax.Array], list[Any]],
    mask: Any,
    *hypers: Any,
    bounds: tuple[str, str] | None = None,
) -> _rules.Rule | None:
    """The rule of a :func:`params_transform`: C++ ``op`` on the new value (see :func:`params_code`)."""
    return count_rule(params_code(op, bounds), scalars, mask, *hypers, param_space=True)


def unit_rule(
    factor: str,
    axis: int | None,
    scalars: Callable[[jax.Array], list[Any]],
    mask: Any,
    *hypers: Any,
    joint: bool = False,
) -> _rules.Rule | None:
    """The rule of a :func:`params_transform` that multiplies each unit of a leaf by
    ``f``, set from the unit's sum of squares ``ss`` by the C++ statements ``factor``
    (``joint``: one unit of all the selected leaves together)."""
    return count_rule(
        params_code("x = x * f;"), scalars, mask, *hypers, param_space=True, factor=factor, axis=axis, joint=joint
    )


def params_code(op: str, bounds: tuple[str, str] | None = None) -> str:
    """C++ for a parameter-space rule: ``x = wi + u``, ``op`` on ``x``, ``u = x - wi``.

    With ``bounds`` the update is nudged as :func:`land_within` does.
    """
    code = "{ float x = wi + u; " + op + " u = x - wi; }"
    return code + (_rules.land_within_code(*bounds) if bounds else "")
