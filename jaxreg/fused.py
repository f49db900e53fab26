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

* every member has an element-wise rule: :func:`adam`, :func:`sgd`,
  ``clip_by_global_norm`` and ``clip_by_leaf_norm`` (2-norm, first in the chain),
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
* parameters and gradients are float32, on one CPU device;
* the kernels could be built: a C++ compiler is on the PATH (or in ``CXX``) and
  ``JAXREG_NATIVE=0`` is not set; they are cached in ``~/.cache/jaxreg`` (or
  ``$JAXREG_CACHE_DIR``).

Otherwise :func:`apply_step` runs ``tx.update`` and ``optax.apply_updates``: the same
numbers (the tests hold the two to 1e-6), more memory traffic. On GPU and TPU XLA's own
fusion already does well and the unfused path is used.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _checks, _native, _rules, _tree

__all__ = ["FusedChain", "adam", "apply_step", "chain", "fast_path", "sgd"]


class FusedChain(optax.GradientTransformationExtraArgs):
    """An ``optax.chain`` that remembers its members, for :func:`apply_step`'s single pass."""

    members: tuple[optax.GradientTransformation, ...]


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
    return fused


def adam(
    learning_rate: chex.Numeric | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """``optax.adam`` with its element-wise form, so :func:`chain` can fuse it.

    The transformation *is* ``optax.adam(learning_rate, b1, b2, eps, eps_root)``: same
    ``update``, same state (``ScaleByAdamState`` and the learning rate's), so
    checkpoints and code that reads ``state[...].mu`` carry over. For AdamW chain it
    with :func:`jaxreg.decoupled_weight_decay` (``torch.optim.AdamW`` semantics).

    Args:
      learning_rate: step size (float, scalar or schedule).
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the root of the second moment.
      eps_root: added to the second moment under the root.

    Returns:
      ``optax.adam``'s transformation, carrying its rule.
    """
    tx = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    step_size = _StepSize(learning_rate)

    def scalars(state, norm):
        adam_state, lr_state = state
        count = optax.safe_increment(adam_state.count)
        return [b1, 1 - b1, b2, 1 - b2, eps, eps_root, 1 - b1**count, 1 - b2**count, step_size.scale(lr_state)]

    def advance(state, slots, norm):
        adam_state, lr_state = state
        adam_state = adam_state._replace(count=optax.safe_increment(adam_state.count), mu=slots[0], nu=slots[1])
        return (adam_state, step_size.advance(lr_state))

    rule = _rules.Rule(
        code=(
            "{ const float m = @s1 * u + @s0 * @m0[i]; const float v = @s3 * (u * u) + @s2 * @m1[i];"
            " @m0[i] = m; @m1[i] = v; u = (m / @s6) / (__builtin_sqrtf(v / @s7 + @s5) + @s4); u = u * @s8; }"
        ),
        scalars=scalars,
        advance=advance,
        slots=lambda state: [state[0].mu, state[0].nu],
    )
    return _rules.describe(tx, rule if _rules.is_scalar(learning_rate) else None)


def sgd(
    learning_rate: chex.Numeric | optax.Schedule, momentum: float | None = None, nesterov: bool = False
) -> optax.GradientTransformationExtraArgs:
    """``optax.sgd`` with its element-wise form, so :func:`chain` can fuse it.

    The transformation *is* ``optax.sgd(learning_rate, momentum, nesterov)``: the
    heavy-ball trace ``t <- g + momentum * t`` (``nesterov``: the step is
    ``g + momentum * t``), scaled by ``-learning_rate``; same state
    (``TraceState`` and the learning rate's). That is ``torch.optim.SGD``'s update with
    ``dampening=0`` (the tests hold 100 steps of the two within 1e-5); for its
    ``weight_decay`` put :func:`jaxreg.coupled_weight_decay` before it in the chain.

    Args:
      learning_rate: step size (float, scalar or schedule).
      momentum: the trace's decay; None (the default): plain SGD, no state per leaf.
      nesterov: Nesterov momentum (needs ``momentum``).

    Returns:
      ``optax.sgd``'s transformation, carrying its rule.

    Raises:
      ValueError: ``momentum`` negative, or ``nesterov`` without ``momentum``.
    """
    fn = "sgd"
    if momentum is not None:
        _checks.check_nonnegative(fn, "momentum", momentum)
    elif nesterov:
        raise ValueError(f"{fn}: nesterov=True needs a momentum (got momentum=None)")
    tx = optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
    step_size = _StepSize(learning_rate)
    if momentum is None:
        code = "u = u * @s0;"
    else:
        last = "u = u + @s1 * t;" if nesterov else "u = t;"
        code = f"{{ const float t = u + @s1 * @m0[i]; @m0[i] = t; {last} u = u * @s0; }}"

    def advance(state, slots, norm):
        trace_state, lr_state = state
        if momentum is not None:
            trace_state = trace_state._replace(trace=slots[0])
        return (trace_state, step_size.advance(lr_state))

    rule = _rules.Rule(
        code=code,
        scalars=lambda state, norm: [step_size.scale(state[1]), *([] if momentum is None else [momentum])],
        advance=advance,
        slots=lambda state: [] if momentum is None else [state[0].trace],
    )
    scalar = _rules.is_scalar(learning_rate) and (momentum is None or _rules.is_scalar(momentum))
    return _rules.describe(tx, rule if scalar else None)


class _StepSize:
    """The ``-learning_rate`` an optax optimizer ends with (``scale_by_learning_rate``):
    its value at this step and its state after it (a schedule counts its steps)."""

    def __init__(self, learning_rate: chex.Numeric | optax.Schedule):
        self.learning_rate = learning_rate

    def scale(self, lr_state: Any) -> Any:
        lr = self.learning_rate
        return -1 * (lr(lr_state.count) if callable(lr) else lr)

    def advance(self, lr_state: Any) -> Any:
        if callable(self.learning_rate):
            return lr_state._replace(count=optax.safe_increment(lr_state.count))
        return lr_state


def fast_path(tx: Any, grads: Any, params: Any) -> str | None:
    """Why :func:`apply_step` cannot take the single pass for these arguments; None if it can."""
    rules = [_rules.rule_of(m) for m in getattr(tx, "members", ())]
    if not isinstance(tx, FusedChain):
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
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return "the single pass runs on one CPU device"
    leaves = jax.tree.leaves(_tree.unbox(params)) + jax.tree.leaves(_tree.unbox(grads))
    if not leaves or any(jnp.result_type(x) != jnp.float32 for x in leaves):
        return "parameters and gradients must be float32"
    if not _native.available():
        return f"the native kernels are not available: {_native.why_unavailable()}"
    if first_unit < len(rules):
        selected = [_tree.resolve_mask("chain", r.mask, params) for r in rules]
        try:
            _layouts(rules, selected, params)
        except ValueError as error:
            return str(error)
        return _unaligned_joint(rules, _variants(selected, len(selected[0]))[0])
    return None


def _joint_stages(rules: Sequence[_rules.Rule], active: Sequence[int]) -> list[int]:
    """For each stage of a variant (its active members), the member whose one unit spans
    all the leaves it selects (a global ball), or -1."""
    return [i if rules[i].joint else -1 for i in active if rules[i].factor is not None]


def _unaligned_joint(rules: Sequence[_rules.Rule], variants: Sequence[Sequence[int]]) -> str | None:
    """Why a joint member cannot be fused: on some of its leaves it comes after more
    per-unit members than on others, so its leaves would reach it in different stages."""
    stage_of: dict[int, set[int]] = {}
    for active in variants:
        for stage, member in enumerate(_joint_stages(rules, active)):
            if member >= 0:
                stage_of.setdefault(member, set()).add(stage)
    for member, found in sorted(stage_of.items()):
        if len(found) > 1:
            return (
                f"member {member} of the chain scales all the leaves it selects together, but members before it "
                "that rescale units act on some of those leaves only"
            )
    return None


def _layouts(rules: Sequence[_rules.Rule], selected: Sequence[Sequence[bool]], params: Any) -> list[tuple[int, int]]:
    """Each leaf's ``(units, inner)`` for the per-unit rules acting on it (a leaf viewed as
    ``(outer, units, inner)``; ``(1, 1)`` for a leaf without any); ``selected[i]`` is rule
    ``i``'s resolved mask.

    Raises:
      ValueError: the per-unit rules acting on a leaf cut it into different units, or an
        axis is out of range (the unfused chain then says which).
    """
    paths, leaves, _ = _tree.leaves_with_paths(params)
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
                raise ValueError(f"axis {rule.axis} is out of range for params{jax.tree_util.keystr(paths[leaf])}")
    for path, found in zip(paths, layouts):
        if len(found) > 1:
            raise ValueError(f"members of the chain rescale different units of params{jax.tree_util.keystr(path)}")
    return [found.pop() if found else (1, 1) for found in layouts]


def apply_step(tx: optax.GradientTransformation, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
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

    Returns:
      The new parameters (in the structure of ``params``) and the new state.
    """
    if fast_path(tx, grads, params) is None:
        try:
            return _single_pass(tx, grads, state, params)
        except _native.KernelBuildError as error:
            warnings.warn(
                f"jaxreg.apply_step: this chain's kernel could not be built ({error}); running it unfused.",
                RuntimeWarning,
                stacklevel=2,
            )
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _single_pass(tx: FusedChain, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
    if not isinstance(state, tuple) or len(state) != len(tx.members):
        raise ValueError(
            f"apply_step: the state is not the state of this chain of {len(tx.members)} transforms "
            "(make it with tx.init(params))"
        )
    _, p_leaves, _ = _tree.leaves_with_paths(params)
    g_leaves = _tree.match_tree("apply_step", "grads", grads, params, broadcast=False)
    rules = [_rules.rule_of(m) for m in tx.members]
    slot_trees = [list(r.slots(s)) for r, s in zip(rules, state)]
    slots = [[jax.tree.leaves(_tree.unbox(tree)) for tree in trees] for trees in slot_trees]
    inputs = [
        [[jnp.broadcast_to(x, np.shape(w)) for x, w in zip(jax.tree.leaves(tree), p_leaves)] for tree in r.inputs(s)]
        for r, s in zip(rules, state)
    ]
    norm = None
    if rules[0].global_norm or rules[0].leaf_norms:
        # Traced before the kernel is built: if the build fails, this call is dead code
        # (it has no side effect) in the unfused step apply_step falls back to.
        sums = jax.ffi.ffi_call("jaxreg_sumsq", jax.ShapeDtypeStruct((len(g_leaves),), jnp.float32))(*g_leaves)
        norm = jnp.sqrt(jnp.sum(sums)) if rules[0].global_norm else jnp.sqrt(sums)
    scalars = [[jnp.asarray(v, jnp.float32) for v in r.scalars(s, norm)] for r, s in zip(rules, state)]
    flat = [v for vs in scalars for v in vs]
    leafwise = [v.ndim == 1 for v in flat]  # one value per leaf: a column of the leaf table
    selected = [_tree.resolve_mask("chain", r.mask, params) for r in rules]
    variants, per_leaf = _variants(selected, len(p_leaves))
    layouts = _layouts(rules, selected, params)
    kernel = _native.register_kernels(
        *_kernel_source(
            rules, [len(v) for v in scalars], [len(s) for s in slots], [len(k) for k in inputs], variants, leafwise
        )
    )
    n_counters = sum(r.n_counters for r in rules)
    stages = [sum(rules[i].factor is not None for i in active) for active in variants]
    n_slots = sum(len(s) for s in slots)
    n_inputs = sum(len(k) for k in inputs)
    shared = [v for v, per_leaf in zip(flat, leafwise) if not per_leaf]
    columns = [v for v, per_leaf in zip(flat, leafwise) if per_leaf]
    operands = [
        jnp.stack(shared) if shared else jnp.zeros([1], jnp.float32),
        jnp.stack(columns, axis=1).reshape(-1) if columns else jnp.zeros([1], jnp.float32),
    ]
    results, aliases = [], {}
    for leaf, (g, w) in enumerate(zip(g_leaves, p_leaves)):
        leaf_slots = [column[leaf] for member in slots for column in member]
        leaf_inputs = [column[leaf].astype(jnp.bool_) for member in inputs for column in member]
        for k, x in enumerate([w, *leaf_slots]):
            aliases[len(operands) + 1 + k] = len(results)
            results.append(jax.ShapeDtypeStruct(x.shape, jnp.float32))
        operands += [g, w, *leaf_slots, *leaf_inputs]
    results.append(jax.ShapeDtypeStruct((max(n_counters, 1),), jnp.float32))  # the counters' totals
    out = jax.ffi.ffi_call("jaxreg_step", results, input_output_aliases=aliases, vmap_method="sequential")(
        *operands,
        kernel=kernel,
        variants=np.asarray(per_leaf, np.int64),
        n_slots=np.int64(n_slots),
        n_inputs=np.int64(n_inputs),
        n_counters=np.int64(n_counters),
        n_leaf_scalars=np.int64(len(columns)),
        stages=np.asarray(stages, np.int64),
        units=np.asarray([units for units, _ in layouts], np.int64),
        inner=np.asarray([inner for _, inner in layouts], np.int64),
        joint=np.asarray([m for active in variants for m in _joint_stages(rules, active)], np.int64),
    )
    stride = 1 + n_slots
    new_params = _tree.rebox_like(params, [out[leaf * stride] for leaf in range(len(p_leaves))])
    new_state, offset, counter = [], 1, 0
    for rule, member_state, trees, picks in zip(rules, state, slot_trees, selected):
        new_trees = []
        for tree in trees:
            new_trees.append(_tree.rebox_like(tree, [out[leaf * stride + offset] for leaf in range(len(p_leaves))]))
            offset += 1
        member_state = rule.advance(member_state, new_trees, norm)
        if rule.n_counters:
            seen = max(sum(int(np.size(w)) for w, picked in zip(p_leaves, picks) if picked), 1)
            member_state = rule.record(member_state, [c / seen for c in out[-1][counter : counter + rule.n_counters]])
            counter += rule.n_counters
        new_state.append(member_state)
    return new_params, tuple(new_state)


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


def _kernel_source(
    rules: Sequence[_rules.Rule],
    n_scalars: Sequence[int],
    n_slots: Sequence[int],
    n_inputs: Sequence[int],
    variants,
    leafwise: Sequence[bool],
) -> tuple[str, list[str]]:
    """C++ of each variant's functions: stage 0 runs the active members up to the first
    per-unit one; each per-unit member starts a stage (its factor, and its rescaling
    followed by the members up to the next, for rows of units or for one unit).

    Rule ``i`` reads ``n_scalars[i]`` scalars, ``n_slots[i]`` state slots and
    ``n_inputs[i]`` read-only bool arrays (stage 0 only reads those); scalar
    ``k`` of all rules in order comes from the shared table ``S``, or from this leaf's row
    ``L`` of the leaf table where ``leafwise[k]`` (stage 0 only reads those). The
    functions of variant ``v`` come in the order ``jaxreg_step`` reads them: stage 0,
    then factor, rows and one for every further stage.
    """
    scalar_base = np.cumsum([0, *n_scalars]).tolist()
    slot_base = np.cumsum([0, *n_slots]).tolist()
    input_base = np.cumsum([0, *n_inputs]).tolist()
    counter_base = np.cumsum([0, *(r.n_counters for r in rules)]).tolist()
    shared = np.cumsum([0, *(not x for x in leafwise)]).tolist()
    column = np.cumsum([0, *leafwise]).tolist()
    scalars = [f"  const float s{k} = S[{shared[k]}];" for k in range(scalar_base[-1]) if not leafwise[k]]
    leaf_scalars = [f"  const float s{k} = L[{column[k]}];" for k in range(scalar_base[-1]) if leafwise[k]]

    def local(i: int, code: str) -> str:
        code = re.sub(r"@s(\d+)", lambda m: f"s{scalar_base[i] + int(m.group(1))}", code)
        code = re.sub(r"@c(\d+)", lambda m: f"c{counter_base[i] + int(m.group(1))}", code)
        code = re.sub(r"@k(\d+)", lambda m: f"k{input_base[i] + int(m.group(1))}", code)
        return re.sub(r"@m(\d+)", lambda m: f"m{slot_base[i] + int(m.group(1))}", code)

    def function(
        name: str, args: str, loop: str, first: Sequence[str], members: Sequence[int], stage0: bool = False
    ) -> list[str]:
        # Only stage 0 reads the leaf's own scalars and the inputs, and counts: int32
        # within a call (one chunk), then added to C.
        counters = range(counter_base[-1] if stage0 else 0)
        return [
            f'extern "C" void {name}({args}) {{',
            *scalars,
            *(leaf_scalars if stage0 else []),
            *(f"  float* __restrict m{k} = slots[{k}];" for k in range(slot_base[-1]) if "slots" in args),
            *(f"  const bool* __restrict k{j} = inputs[{j}];" for j in range(input_base[-1] if stage0 else 0)),
            *(f"  int32_t c{k} = 0;" for k in counters),
            f"  {loop} {{",
            *(f"    {line}" for line in first),
            *(f"    {local(i, rules[i].code)}" for i in members),
            "    w[i] = wi + u;",
            "  }",
            *(f"  C[{k}] += c{k};" for k in counters),
            "}",
        ]

    lines, names = ["#include <cstdint>"], []
    for v, active in enumerate(variants):
        cuts = [k for k, i in enumerate(active) if rules[i].factor is not None]
        stages = [active[a:b] for a, b in zip([0, *cuts], [*cuts, len(active)])]
        names.append(f"jaxreg_v{v}_stage0")
        lines += function(
            names[-1],
            "const float* __restrict g, float* __restrict w, float* const* slots, const bool* const* inputs,"
            " const float* S, const float* L, int64_t n, int64_t* __restrict C",
            "for (int64_t i = 0; i < n; ++i)",
            ["const float wi = w[i];", "float u = g[i];"],
            stages[0],
            stage0=True,
        )
        for k, members in enumerate(stages[1:], start=1):
            factor = local(members[0], rules[members[0]].factor)
            names += [f"jaxreg_v{v}_factor{k}", f"jaxreg_v{v}_rows{k}", f"jaxreg_v{v}_one{k}"]
            lines += [
                f'extern "C" void {names[-3]}(float* F, const float* S, int64_t n) {{',
                *scalars,
                f"  for (int64_t j = 0; j < n; ++j) {{ const float ss = F[j]; float f; {{ {factor} }} F[j] = f; }}",
                "}",
            ]
            lines += function(
                names[-2],
                "float* __restrict w, const float* S, int64_t rows, int64_t units, const float* __restrict F",
                "for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < units; ++j)",
                [
                    "const int64_t i = r * units + j;",
                    "const float f = F[j];",
                    "const float wi = w[i];",
                    "float u = 0.0f;",
                ],
                members,
            )
            lines += function(
                names[-1],
                "float* __restrict w, const float* S, int64_t n, const float f",
                "for (int64_t i = 0; i < n; ++i)",
                ["const float wi = w[i];", "float u = 0.0f;"],
                members,
            )
    return "\n".join(lines) + "\n", names
