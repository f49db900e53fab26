"""One pass for the whole chain: ``jaxreg.chain`` and ``jaxreg.apply_step``.

An update step is memory-bound. ``optax.chain`` of clip -> Adam -> decay -> prox -> box,
jitted, makes XLA's CPU backend emit three loops per leaf (it does not fuse loops with
several outputs) and ``optax.apply_updates`` adds the new params to the old, so every
parameter costs 11 or more 4-byte transfers. The compulsory traffic is 8: read the
gradient once for the global norm, then read ``g, w, mu, nu`` and write ``w, mu, nu``
once. :func:`chain` composes the element-wise rules of its members into one loop per
chain (a few lines of C++, compiled once per machine and cached), and
:func:`apply_step` runs it over all leaves at once, in chunks spread over the cores,
writing the new parameters and optimizer state in place.

``jaxreg.chain`` is an ``optax.chain``: same ``init``, same ``update``, same state, so
it drops into ``nnx.Optimizer`` or any optax code unchanged. The single pass is taken
by :func:`apply_step` (which replaces ``tx.update`` + ``optax.apply_updates``) when

* every member has an element-wise rule: :func:`jaxreg.adam`, :func:`jaxreg.sgd`,
  ``clip_by_global_norm`` (over the leaves its mask selects) and ``clip_by_leaf_norm`` (2-norm,
  first in the chain),
  ``clip`` (the pass counts its clipped fraction), ``coupled_weight_decay``,
  ``decoupled_weight_decay``, ``l1_prox``, ``elastic_net_prox``, ``project_box`` and
  ``project_nonnegative`` with one value per hyperparameter (floats, scalars or
  schedules), with masks; ``pruning.keep_pruned`` without ``inner`` (the pass reads its
  mask);
* or rescales units by their norms: ``max_norm``, ``group_lasso_prox`` and
  ``project_l2_ball`` (one unit per leaf, or all its leaves as one). Each such member
  starts a new stage on the leaves it selects: the pass sums each unit's squares from
  the rows it has just written, then one more read and write of those leaves rescales
  them and runs the members after it, which must be projections or proximal steps (they
  read only the new value). The members rescaling one leaf must agree on its units (the
  same axis), and all the leaves of a global ball must reach it in the same stage;
* parameters, gradients and the state the pass reads are float32, on one CPU device,
  and the chain keeps at most 8 arrays per parameter in its state and reads at most 8
  masks;
* the kernels could be built: a C++ compiler is on the PATH (or in ``CXX``) and
  ``JAXREG_NATIVE=0`` is not set; they are cached in ``~/.cache/jaxreg`` (or
  ``$JAXREG_CACHE_DIR``), a directory only the user may write; a cached library is
  loaded only if it matches the size and SHA-256 recorded when it was built.

Before the custom call, every gradient, state slot and mask is checked against its
parameter (at trace time: the checks cost nothing per step); one that does not fit
raises a ``ValueError`` naming the leaf. Under ``jax.vmap`` (over strengths, seeds or
lanes of parameters, nested or not) one call runs every lane, each with its own scalars,
norms and counters (``vmap_method="broadcast_all"``: what is not batched is broadcast), and
``jax.grad`` / ``jax.jvp`` differentiate the unfused chain (the pass has no derivative
of its own).

Otherwise :func:`apply_step` runs ``tx.update`` and ``optax.apply_updates``: the same
numbers (the tests hold the two to 1e-6), more memory traffic. On GPU and TPU XLA's own
fusion already does well and the unfused path is used.

In a jitted training step on CPU, return the gradients through :func:`write_into` into a
donated buffer: a step that clips by the global norm keeps all its gradients alive, and
as temporaries of the call they are mapped afresh (and faulted in page by page) every
step once they pass 32 MB.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _native, _plan, _rules, _tree
from jaxreg._native import codegen
from jaxreg.buffers import write_into

__all__ = ["FusedChain", "apply_step", "chain", "fast_path", "write_into"]


class FusedChain(optax.GradientTransformationExtraArgs):
    """An ``optax.chain`` that remembers its members, for :func:`apply_step`'s single pass."""

    members: tuple[optax.GradientTransformation, ...]
    plans: dict  # the plan of each argument signature (jaxreg._plan)


def chain(*transforms: optax.GradientTransformation) -> FusedChain:
    """``optax.chain(*transforms)`` that :func:`apply_step` can run as one pass.

    ``init`` and ``update`` are ``optax.chain``'s, and so is the state (a tuple with
    one entry per transform), so the result works wherever an optax transformation
    does. Pass it to :func:`apply_step` to update the parameters in one pass over the
    memory when every member has an element-wise form (see :func:`fast_path`).

    Args:
      *transforms: optax gradient transformations, in order.

    Returns:
      A :class:`FusedChain`.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> tx = jaxreg.chain(jaxreg.clip_by_global_norm(1.0), jaxreg.adam(1e-3),
      ...                   jaxreg.decoupled_weight_decay(1e-2, learning_rate=1e-3))
      >>> params = {"w": jnp.ones(3)}
      >>> params, state = jaxreg.apply_step(tx, {"w": jnp.ones(3)}, tx.init(params), params)
      >>> params["w"]
      Array([0.99899, 0.99899, 0.99899], dtype=float32)
    """
    base = optax.chain(*transforms)
    fused = FusedChain(base.init, base.update)
    fused.members = tuple(transforms)
    fused.plans = {}
    return fused


def fast_path(tx: Any, grads: Any, params: Any, state: Any = None) -> str | None:
    """Why :func:`apply_step` cannot take the single pass for these arguments; None if it will.

    None means the pass will really be taken: the chain's kernel is built (or found in
    the cache) to answer.

    Args:
      tx: the transformation.
      grads: the gradients.
      params: the parameters.
      state: ``tx``'s state; None: the state ``tx.init(params)`` would make (its shapes
        and dtypes only).

    Returns:
      The reason, or None.
    """
    try:
        if state is None and hasattr(tx, "members"):
            state = jax.eval_shape(tx.init, params)
        plan = _plan.plan_for(tx, grads, state, params)
    except ValueError as error:
        return str(error)
    if plan.reason is None:
        try:  # traced without running, only to build (or fail to build) the kernel
            with jax.numpy_dtype_promotion("standard"):
                jax.eval_shape(lambda g, s, p: _single_pass(plan, g, s, p), grads, state, params)
        except _native.KernelBuildError as error:
            return f"this chain's kernel could not be built: {error}"
    return plan.reason


def apply_step(
    tx: optax.GradientTransformation, grads: Any, state: Any, params: Any, **extra_args: Any
) -> tuple[Any, Any]:
    """One optimizer step: ``(new_params, new_state)``.

    For any optax transformation this is ``tx.update(grads, state, params)`` followed by
    ``optax.apply_updates``. For a :func:`chain` whose members all have element-wise
    forms, on float32 parameters on one CPU device, it is one pass over the memory
    that writes the new parameters and state in place (donate them to your jitted step
    so no copy is made); :func:`fast_path` says why it is not taken otherwise.

    Args:
      tx: an optax gradient transformation (a :func:`chain` for the single pass).
      grads: gradients, shaped like ``params``.
      state: ``tx``'s state.
      params: the parameters (a pytree; an NNX state works too).
      **extra_args: passed to ``tx.update`` for the members that read them, such as
        ``value=loss`` for ``optax.contrib.reduce_on_plateau`` (optax's
        ``GradientTransformationExtraArgs``); the single pass reads none (its members are
        element-wise), so a chain with such a member runs unfused.

    Returns:
      The new parameters (in the structure of ``params``) and the new state.

    Raises:
      ValueError: for a :func:`chain`, a gradient, state slot or mask that does not fit
        its parameter (naming the leaf), or a state of another chain.
    """
    if hasattr(tx, "members"):
        plan = _plan.plan_for(tx, grads, state, params)
        if plan.reason is None:
            try:
                return _differentiable(tx, plan)(grads, state, params)
            except _native.KernelBuildError as error:
                warnings.warn(
                    f"jaxreg.apply_step: this chain's kernel could not be built ({error}); running it unfused.",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _unfused(tx, grads, state, params, **extra_args)


def _unfused(tx: optax.GradientTransformation, grads: Any, state: Any, params: Any, **extra_args: Any):
    if extra_args:
        updates, state = optax.with_extra_args_support(tx).update(grads, state, params, **extra_args)
    else:
        updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _differentiable(tx: FusedChain, plan: _plan.Plan):
    """The single pass, with the unfused chain's derivatives (the pass has none of its own)."""

    @jax.custom_jvp
    def step(grads, state, params):
        return _single_pass(plan, grads, state, params)

    @step.defjvp
    def step_jvp(primals, tangents):
        _, tangents_out = jax.jvp(lambda g, s, p: _unfused(tx, g, s, p), primals, tangents)
        return step(*primals), tangents_out

    return step


# A gradient of this many elements or more gets a norm call of its own: in a training
# step each such call can run as soon as the backward pass has written its gradient
# (still in cache, beside the matmuls still running), not after all of them.
OWN_NORM_CALL = 1 << 18


def _norms(plan: _plan.Plan, g_leaves: list[jax.Array]) -> jax.Array | None:
    """The gradient norm the first member reads: the global norm over the leaves it selects,
    or each leaf's norm; None when it reads none."""
    first = plan.rules[0]
    if not (first.global_norm or first.leaf_norms):
        return None
    n = len(g_leaves)
    large = [leaf for leaf in range(n) if np.size(g_leaves[leaf]) >= OWN_NORM_CALL]
    rest = [leaf for leaf in range(n) if np.size(g_leaves[leaf]) < OWN_NORM_CALL]
    sums, norms = [], []
    for group in [[leaf] for leaf in large] + ([rest] if rest else []):
        out = jax.ffi.ffi_call(
            "jaxreg_sumsq", jax.ShapeDtypeStruct((2 * len(group),), jnp.float32), vmap_method="broadcast_all"
        )(*[g_leaves[leaf] for leaf in group])
        sums.append(out[: len(group)])
        norms.append(out[len(group) :])
    order = np.argsort(np.asarray(large + rest, np.int64))  # back to the leaves' order
    if first.leaf_norms:
        return jnp.concatenate(norms)[order]
    picked = np.asarray([leaf for leaf in range(n) if plan.selected[0][leaf]], np.int64)
    return jnp.sqrt(jnp.sum(jnp.concatenate(sums)[order][picked])) if picked.size else jnp.zeros([], jnp.float32)


def _single_pass(plan: _plan.Plan, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
    _, p_leaves, _ = _tree.leaves_with_paths(params)
    g_leaves = _tree.match_tree("apply_step", "grads", grads, params, broadcast=False)
    rules = plan.rules
    slot_trees = [list(r.slots(s)) for r, s in zip(rules, state)]
    slots = [[jax.tree.leaves(_tree.unbox(tree)) for tree in trees] for trees in slot_trees]
    inputs = [
        [[jnp.broadcast_to(x, np.shape(w)) for x, w in zip(jax.tree.leaves(tree), p_leaves)] for tree in r.inputs(s)]
        for r, s in zip(rules, state)
    ]
    norm = _norms(plan, g_leaves)
    scalars = [[jnp.asarray(v, jnp.float32) for v in r.scalars(s, norm)] for r, s in zip(rules, state)]
    for member, (rule, values) in enumerate(zip(rules, scalars)):
        _rules.check_counts(member, rule, state[member], len(values))
    flat = [v for vs in scalars for v in vs]
    leafwise = tuple(v.ndim == 1 for v in flat)  # one value per leaf: a column of the leaf table
    counts = (tuple(len(v) for v in scalars), tuple(len(s) for s in slots), tuple(len(k) for k in inputs), leafwise)
    if counts not in plan.kernels:
        plan.kernels[counts] = codegen.kernel_source(rules, *counts[:3], plan.variants, leafwise)
    kernel = _native.register_kernels(*plan.kernels[counts])
    n_counters = sum(r.n_counters for r in rules)
    n_slots = sum(len(s) for s in slots)
    n_inputs = sum(len(k) for k in inputs)
    shared = [v for v, per_leaf in zip(flat, leafwise) if not per_leaf]
    columns = [v for v, per_leaf in zip(flat, leafwise) if per_leaf]
    table = jnp.stack(shared) if shared else jnp.zeros([1], jnp.float32)
    leaf_table = jnp.stack(columns, axis=1) if columns else None
    attributes = dict(
        kernel=kernel,
        n_slots=np.int64(n_slots),
        n_inputs=np.int64(n_inputs),
        n_counters=np.int64(n_counters),
        n_leaf_scalars=np.int64(len(columns)),
        stages=np.asarray([sum(rules[i].factor is not None for i in active) for active in plan.variants], np.int64),
        joint=np.asarray([m for active in plan.variants for m in _plan.joint_stages(rules, active)], np.int64),
    )
    new_w: list[Any] = [None] * len(p_leaves)
    new_slots = [[[None] * len(p_leaves) for _ in member] for member in slots]
    totals = jnp.zeros([max(n_counters, 1)], jnp.float32)
    for leaves in plan.calls:
        rows = leaf_table[np.asarray(leaves)].reshape(-1) if leaf_table is not None else jnp.zeros([1], jnp.float32)
        operands, results, aliases = [table, rows], [], {}
        for leaf in leaves:
            leaf_slots = [column[leaf] for member in slots for column in member]
            leaf_inputs = [column[leaf].astype(jnp.bool_) for member in inputs for column in member]
            for k, x in enumerate([p_leaves[leaf], *leaf_slots]):
                aliases[len(operands) + 1 + k] = len(results)
                results.append(jax.ShapeDtypeStruct(np.shape(x), jnp.float32))
            operands += [g_leaves[leaf], p_leaves[leaf], *leaf_slots, *leaf_inputs]
        results.append(jax.ShapeDtypeStruct((max(n_counters, 1),), jnp.float32))  # the counters' totals
        out = jax.ffi.ffi_call("jaxreg_step", results, input_output_aliases=aliases, vmap_method="broadcast_all")(
            *operands,
            variants=np.asarray([plan.per_leaf[leaf] for leaf in leaves], np.int64),
            units=np.asarray([plan.layouts[leaf][0] for leaf in leaves], np.int64),
            inner=np.asarray([plan.layouts[leaf][1] for leaf in leaves], np.int64),
            **attributes,
        )
        for k, leaf in enumerate(leaves):
            new_w[leaf], *rest = out[k * (1 + n_slots) : (k + 1) * (1 + n_slots)]
            position = iter(rest)
            for member in new_slots:
                for column in member:
                    column[leaf] = next(position)
        totals = totals + out[-1]
    new_params = _tree.rebox_like(params, new_w)
    new_state, counter = [], 0
    for rule, member_state, trees, picks, member_slots in zip(rules, state, slot_trees, plan.selected, new_slots):
        new_trees = [_tree.rebox_like(tree, column) for tree, column in zip(trees, member_slots)]
        member_state = rule.advance(member_state, new_trees, norm)
        if rule.n_counters:
            seen = max(sum(int(np.size(w)) for w, picked in zip(p_leaves, picks) if picked), 1)
            member_state = rule.record(member_state, [c / seen for c in totals[counter : counter + rule.n_counters]])
            counter += rule.n_counters
        new_state.append(member_state)
    return new_params, tuple(new_state)
