"""The contract every parameter-space transform follows (docs/architecture.md, "Two spaces, one contract").

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
    clips would land one ulp outside it after ``optax.apply_updates``. The nudge is a
    constant to derivatives (``nextafter`` has none): ``d``'s derivative passes through.
    """
    dtype = p.dtype
    lo, hi = jnp.asarray(lower).astype(dtype), jnp.asarray(upper).astype(dtype)
    fixed = jax.lax.stop_gradient(d)
    landed = jax.lax.stop_gradient(p) + fixed
    down = jnp.nextafter(fixed, jnp.full_like(fixed, -jnp.inf))
    up = jnp.nextafter(fixed, jnp.full_like(fixed, jnp.inf))
    # One ulp apart, so the difference and the sum below are exact.
    nudge = jnp.where(landed > hi, down - fixed, jnp.where(landed < lo, up - fixed, jnp.zeros_like(fixed)))
    return d + nudge


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
    hypers: Sequence[tuple[str, Any]] = (),
    real_only: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """A transform that rewrites the updates of the selected leaves, reading params.

    ``op`` sees only the leaves it changes: those ``mask`` selects whose params and
    updates are floating or complex (integer leaves, e.g. a step counter, pass
    unchanged), as JAX arrays (Python scalars are converted). With none selected the
    transform is the identity and ``op`` is not called.

    Args:
      fn: public name of the transform, used in error messages.
      op: maps the selected updates, the selected params and the step count to the
        new selected updates.
      mask: pytree of bools or callable ``params -> mask``; True where ``op`` applies.
      check: raises on selected leaves that ``op`` cannot handle (e.g. an axis out of
        range); called at ``init`` and when tracing ``update``.
      per_leaf: ``(name, value)`` pairs of hyperparameters given as one value or as a
        tree with the params' structure (each entry a value or a schedule); ``op`` gets
        the selected leaves of each, at this step, as extra list arguments.
      hypers: ``(name, value)`` pairs of hyperparameters given as one value for all
        leaves; an array among them must broadcast to every selected leaf.
      real_only: refuse complex leaves (``op`` is defined on real values only).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with a ``StepCountState``.
    """

    def select(params: Any, *others: Sequence[Any]) -> tuple[list[Any], list[int], list[list[Any]]]:
        paths, leaves, picked = _tree.acted_on(fn, mask, params, *others, real_only=real_only)
        if check is not None:
            check([paths[i] for i in picked], [leaves[i] for i in picked])
        for name, value in hypers:
            for i in picked:
                _tree.check_broadcast(fn, name, paths[i], value, leaves[i])
        columns = [_tree.match_tree(fn, name, value, params) for name, value in per_leaf]
        for (name, _), column in zip(per_leaf, columns):
            for i in picked:
                _tree.check_broadcast(fn, name, paths[i], column[i], leaves[i])
        return leaves, picked, columns

    def init_fn(params: optax.Params) -> StepCountState:
        select(params)  # a bad mask, axis or bound fails here, not at step 1
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
        u_leaves = _tree.match_tree(fn, "updates", updates, params, broadcast=False)
        p_leaves, picked, columns = select(params, u_leaves)
        out = list(u_leaves)
        if picked:
            new = op(
                [_tree.as_array(u_leaves[i]) for i in picked],
                [_tree.as_array(p_leaves[i]) for i in picked],
                state.count,
                *[[_tree.value_at(column[i], state.count) for i in picked] for column in columns],
            )
            for i, u2 in zip(picked, new):
                out[i] = u2.astype(jnp.result_type(u_leaves[i]))
        return _tree.rebox_like(updates, out), StepCountState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def params_transform(
    fn: str,
    op: ParamsOp,
    *,
    mask: Any = None,
    check: LeafCheck | None = None,
    per_leaf: Sequence[tuple[str, Any]] = (),
    hypers: Sequence[tuple[str, Any]] = (),
    real_only: bool = False,
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

    return updates_transform(
        fn, to_updates, mask=mask, check=check, per_leaf=per_leaf, hypers=hypers, real_only=real_only
    )


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
