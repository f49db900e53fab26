"""The plan of a one-pass step: can a chain run as one pass on these arguments, and how.

:func:`plan_for` checks a :func:`jaxreg.chain`, its gradients, state and parameters once
per (chain, tree structure, shapes, dtypes, masks) and caches the result on the chain;
``jaxreg.fast_path`` and ``jaxreg.apply_step`` both read it. A plan says either why the
single pass is not taken (``reason``: the step then runs the unfused chain, which gives
the same numbers), or which members act on which leaves (the *variants*), how the
per-unit members cut each leaf (its *layout*), and how the leaves are split between
custom calls. Arguments that no chain could take (a gradient or a state slot whose shape
is not its parameter's) raise a ``ValueError`` naming the leaf before anything runs:
the kernel writes parameters in place, so a wrong size must never reach it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxreg import _native, _rules, _tree

# Outputs per custom call: XLA's fusion pass takes time quadratic in the outputs of one
# instruction (about 130 s for 3000 outputs on 2 cores, 2 s when cut into calls of 100),
# so the leaves are split between calls unless a global ball needs them all in one.
_OUTPUTS_PER_CALL = 128


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`plan_for` found (see the module's docstring)."""

    reason: str | None
    rules: tuple[_rules.Rule, ...] = ()
    selected: tuple[tuple[bool, ...], ...] = ()  # per member, per leaf: does it act there
    variants: tuple[tuple[int, ...], ...] = ()  # the distinct sets of members acting on a leaf
    per_leaf: tuple[int, ...] = ()  # each leaf's variant
    layouts: tuple[tuple[int, int], ...] = ()  # each leaf's (units, inner) for its per-unit members
    calls: tuple[tuple[int, ...], ...] = ()  # the leaves of each custom call
    kernels: dict = dataclasses.field(default_factory=dict, compare=False)  # kernel sources, by scalar layout


def _where(path: Any) -> str:
    return f"params{jax.tree_util.keystr(path)}"


def _signature(tree: Any) -> tuple[Any, ...]:
    leaves, treedef = jax.tree.flatten(_tree.unbox(tree))
    return treedef, tuple((np.shape(x), str(_dtype(x))) for x in leaves)


def _dtype(x: Any) -> np.dtype:
    """The dtype of an array, tracer or Python number (a Python float is float64)."""
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.result_type(x)


def plan_for(tx: Any, grads: Any, state: Any, params: Any) -> Plan:
    """The plan of ``tx`` on these arguments, computed once per signature and cached on ``tx``.

    Raises:
      ValueError: ``grads`` or the state do not fit ``params`` in a way no chain could
        take (the message names the leaf).
    """
    rules = tuple(_rules.rule_of(m) for m in getattr(tx, "members", ()))
    masks = tuple(
        tuple(_tree.resolve_mask("chain", r.mask, params)) if r is not None else () for r in rules
    )  # resolved on every call: a callable mask is asked each time, as the unfused chain asks it
    key = (_signature(params), _signature(grads), _signature(state), masks, jax.default_backend(), jax.device_count())
    plans = getattr(tx, "plans", None)
    if plans is None:
        return _make_plan(tx, rules, masks, grads, state, params)
    if key not in plans:
        plans[key] = _make_plan(tx, rules, masks, grads, state, params)
    return plans[key]


def _make_plan(tx, rules, masks, grads, state, params) -> Plan:
    reason = _chain_reason(tx, rules)
    if reason is not None:
        return Plan(reason)
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return Plan("the single pass runs on one CPU device")
    paths, p_leaves, _ = _tree.leaves_with_paths(params)
    g_leaves = _tree.match_tree("apply_step", "grads", grads, params, broadcast=False)
    reason = _leaves_reason(paths, p_leaves, g_leaves) or _state_reason(rules, state, paths, p_leaves)
    if reason is not None:
        return Plan(reason)
    if not _native.available():
        return Plan(f"the native kernels are not available: {_native.why_unavailable()}")
    try:
        layouts = _layouts(rules, masks, paths, p_leaves)
    except ValueError as error:
        return Plan(str(error))
    variants, per_leaf = _variants(masks, len(p_leaves))
    reason = _unaligned_joint(rules, variants)
    if reason is not None:
        return Plan(reason)
    n_slots = sum(len(r.slots(s)) for r, s in zip(rules, state))
    return Plan(
        None,
        rules=rules,
        selected=masks,
        variants=tuple(variants),
        per_leaf=tuple(per_leaf),
        layouts=tuple(layouts),
        calls=_calls(rules, variants, len(p_leaves), n_slots),
    )


def _chain_reason(tx: Any, rules: Sequence[_rules.Rule | None]) -> str | None:
    """Why the chain itself (whatever the arguments) has no single pass."""
    if not hasattr(tx, "members"):
        return "the transformation is not a jaxreg.chain"
    missing = [i for i, r in enumerate(rules) if r is None]
    if missing:
        return f"member {missing[0]} of the chain has no element-wise form"
    if any(r.global_norm or r.leaf_norms for r in rules[1:]):
        return "clip_by_global_norm and clip_by_leaf_norm must come first to be fused"
    first_unit = next((i for i, r in enumerate(rules) if r.factor is not None), len(rules))
    late = [i for i in range(first_unit, len(rules)) if not rules[i].param_space]
    if late:
        return (
            f"member {late[0]} of the chain reads the parameters before the step and comes after member "
            f"{first_unit}, which rescales units by their norms: only projections and proximal steps can follow it"
        )
    masked = [i for i in range(first_unit, len(rules)) if rules[i].has_inputs]
    if masked:
        return (
            f"member {masked[0]} of the chain reads a per-leaf mask (keep_pruned) and comes after member "
            f"{first_unit}, which rescales units by their norms: put it before that member to fuse the chain"
        )
    return None


def _leaves_reason(paths, p_leaves, g_leaves) -> str | None:
    """Why these parameters and gradients take the unfused step; raises where no step could take them."""
    if not p_leaves:
        return "the parameters have no leaves"
    for path, p, g in zip(paths, p_leaves, g_leaves):
        if _dtype(p) != np.float32 or _dtype(g) != np.float32:
            return "parameters and gradients must be float32"
        if np.shape(g) != np.shape(p):
            try:
                np.broadcast_shapes(np.shape(g), np.shape(p))
            except ValueError:
                raise ValueError(
                    f"apply_step: grads at {_where(path)} has shape {np.shape(g)}, which does not fit the "
                    f"parameter's shape {np.shape(p)}; give one gradient per parameter, of its shape."
                ) from None
            return (
                f"grads at {_where(path)} has shape {np.shape(g)} where the parameter has {np.shape(p)}: "
                "the unfused chain broadcasts it"
            )
    return None


def _state_reason(rules, state, paths, p_leaves) -> str | None:
    """Why this state takes the unfused step; raises where it does not fit the parameters."""
    if not isinstance(state, tuple) or len(state) != len(rules):
        raise ValueError(
            f"apply_step: the state is not the state of this chain of {len(rules)} transforms "
            "(make it with tx.init(params))"
        )
    n_slots = n_inputs = 0
    for member, (rule, member_state) in enumerate(zip(rules, state)):
        _rules.check_counts(member, rule, member_state)
        for kind, trees in (("state", rule.slots(member_state)), ("mask", rule.inputs(member_state))):
            for tree in trees:
                leaves = jax.tree.leaves(_tree.unbox(tree))
                if len(leaves) != len(p_leaves):
                    raise ValueError(
                        f"apply_step: the {kind} of member {member} of the chain holds {len(leaves)} arrays for "
                        f"{len(p_leaves)} parameters; make the state with tx.init(params) for these params."
                    )
                for path, x, p in zip(paths, leaves, p_leaves):
                    reason = _slot_reason(kind, member, path, x, p)
                    if reason is not None:
                        return reason
        n_slots += len(rule.slots(member_state))
        n_inputs += len(rule.inputs(member_state))
    if n_slots > _native.MAX_SLOTS:
        limit = _native.MAX_SLOTS
        return f"the chain keeps {n_slots} arrays per parameter in its state; the single pass reads at most {limit}"
    if n_inputs > _native.MAX_INPUTS:
        limit = _native.MAX_INPUTS
        return f"the chain reads {n_inputs} masks per parameter; the single pass reads at most {limit}"
    return None


def _slot_reason(kind: str, member: int, path: Any, x: Any, p: Any) -> str | None:
    if kind == "mask":  # a pruning mask broadcasts to its parameter, as in the unfused chain
        try:
            if np.broadcast_shapes(np.shape(x), np.shape(p)) == np.shape(p):
                return None
        except ValueError:
            pass
        raise ValueError(
            f"apply_step: the mask of member {member} of the chain at {_where(path)} has shape {np.shape(x)}, "
            f"which does not broadcast to the parameter's {np.shape(p)}; give a mask shaped like the params."
        )
    if np.shape(x) != np.shape(p):
        raise ValueError(
            f"apply_step: the state of member {member} of the chain at {_where(path)} has shape {np.shape(x)} "
            f"where the parameter has {np.shape(p)}; make the state with tx.init(params) for these params."
        )
    if _dtype(x) != np.float32:
        return (
            f"the state of member {member} of the chain at {_where(path)} is {_dtype(x)}; "
            "the single pass keeps float32 state"
        )
    return None


def _layouts(rules, selected, paths, leaves) -> list[tuple[int, int]]:
    """Each leaf's ``(units, inner)`` for the per-unit rules acting on it (a leaf viewed as
    ``(outer, units, inner)``; ``(1, 1)`` for a leaf without any).

    Raises:
      ValueError: the per-unit rules acting on a leaf cut it into different units, or an
        axis is out of range (the unfused chain then says which).
    """
    layouts = [set() for _ in leaves]
    for rule, picks in zip(rules, selected):
        if rule.factor is None:
            continue
        for leaf, picked in enumerate(picks):
            if not picked:
                continue
            shape = np.shape(leaves[leaf])
            if rule.axis is None:
                layouts[leaf].add((1, int(np.prod(shape))))
            elif -len(shape) <= rule.axis < len(shape):
                axis = rule.axis % len(shape)
                layouts[leaf].add((shape[axis], int(np.prod(shape[axis + 1 :]))))
            else:
                raise ValueError(f"axis {rule.axis} is out of range for {_where(paths[leaf])}")
    for path, found in zip(paths, layouts):
        if len(found) > 1:
            raise ValueError(f"members of the chain rescale different units of {_where(path)}")
    return [found.pop() if found else (1, 1) for found in layouts]


def _variants(selected: Sequence[Sequence[bool]], n_leaves: int) -> tuple[list[tuple[int, ...]], list[int]]:
    """The distinct sets of members acting on a leaf (masks), and each leaf's set's index."""
    variants: list[tuple[int, ...]] = []
    per_leaf = []
    for leaf in range(n_leaves):
        active = tuple(i for i, sel in enumerate(selected) if sel[leaf])
        if active not in variants:
            variants.append(active)
        per_leaf.append(variants.index(active))
    return variants, per_leaf


def joint_stages(rules: Sequence[_rules.Rule], active: Sequence[int]) -> list[int]:
    """For each stage of a variant (its active members), the member whose one unit spans
    all the leaves it selects (a global ball), or -1."""
    return [i if rules[i].joint else -1 for i in active if rules[i].factor is not None]


def _unaligned_joint(rules: Sequence[_rules.Rule], variants: Sequence[Sequence[int]]) -> str | None:
    """Why a joint member cannot be fused: on some of its leaves it comes after more
    per-unit members than on others, so its leaves would reach it in different stages."""
    stage_of: dict[int, set[int]] = {}
    for active in variants:
        for stage, member in enumerate(joint_stages(rules, active)):
            if member >= 0:
                stage_of.setdefault(member, set()).add(stage)
    for member, found in sorted(stage_of.items()):
        if len(found) > 1:
            return (
                f"member {member} of the chain scales all the leaves it selects together, but members before it "
                "that rescale units act on some of those leaves only"
            )
    return None


def _calls(rules, variants, n_leaves: int, n_slots: int) -> tuple[tuple[int, ...], ...]:
    """The leaves of each custom call: all in one where a global ball must see them all."""
    if any(m >= 0 for active in variants for m in joint_stages(rules, active)):
        return (tuple(range(n_leaves)),)
    per_call = max(1, _OUTPUTS_PER_CALL // (1 + n_slots))
    return tuple(tuple(range(b, min(b + per_call, n_leaves))) for b in range(0, n_leaves, per_call))
