"""Pytree plumbing shared by every jaxreg piece: NNX unboxing, leaf paths, masks, norms.

Nothing here is public. The functions work on plain dicts, Flax linen param dicts and
Flax NNX ``State`` alike: NNX ``Variable`` boxes are unwrapped to their arrays first, so
that ``tx.init`` (which ``nnx.Optimizer`` calls with boxed variables) and ``tx.update``
(called with plain arrays) see the same tree.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KeyPath = tuple[Any, ...]


def _is_variable(x: Any) -> bool:
    # Only NNX boxes values in Variables; if flax.nnx was never imported there are none,
    # and jaxreg need not pay for importing it.
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Variable)


def unbox(tree: Any) -> Any:
    """Replaces every NNX ``Variable`` in ``tree`` by the array it holds."""
    if tree is None:
        return None
    return jax.tree.map(lambda x: x.get_value() if _is_variable(x) else x, tree, is_leaf=_is_variable)


def rebox_like(tree: Any, leaves: Sequence[Any]) -> Any:
    """``leaves`` (in ``tree``'s leaf order) in ``tree``'s structure, NNX ``Variable`` boxes included.

    Transforms compute on unboxed leaves; their updates go back in the boxes the
    incoming updates came in, so that ``optax.apply_updates`` matches them to the params
    outside ``nnx.Optimizer`` too (an ``nnx.split`` state).
    """
    return jax.tree.unflatten(jax.tree.structure(tree), leaves)


def path_str(path: KeyPath) -> str:
    """``('dense1', 'kernel')``-style key path as ``'dense1/kernel'`` (for regex masks)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return "/".join(parts)


def leaves_with_paths(tree: Any) -> tuple[list[KeyPath], list[Any], Any]:
    """Flattens an (unboxed) tree into paths, leaves and its treedef."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(unbox(tree))
    return [p for p, _ in pairs], [x for _, x in pairs], treedef


def _first_difference(want: Sequence[KeyPath], have: Sequence[KeyPath], want_def: Any, have_def: Any) -> str:
    have_set, want_set = set(have), set(want)
    for path in want:
        if path not in have_set:
            return f"has no entry for params{jax.tree_util.keystr(path)}"
    for path in have:
        if path not in want_set:
            return f"has an entry params{jax.tree_util.keystr(path)} that the params lack"
    containers = _container_difference(want_def, have_def)
    if containers is not None:
        return f"has the params' leaf paths but {containers}"
    return "has a different tree structure than the params"


def _container_difference(want_def: Any, have_def: Any) -> str | None:
    """'a dict where the params have a State': the first container types that differ."""
    want, have = want_def.node_data(), have_def.node_data()
    if want is None or have is None:
        return None
    if want[0] is not have[0]:
        return f"a {have[0].__name__} where the params have a {want[0].__name__}"
    for w, h in zip(want_def.children(), have_def.children()):
        found = _container_difference(w, h)
        if found is not None:
            return found
    return None


def match_tree(fn: str, arg: str, value: Any, params: Any, broadcast: bool = True) -> list[Any]:
    """Leaves of ``value`` aligned with the leaves of ``params``.

    ``value`` is a pytree with the params' structure or, when ``broadcast``, also one
    value for every leaf (a scalar or a single array). A mismatch raises a
    ``ValueError`` that names the first leaf path that differs.
    """
    paths, leaves, treedef = leaves_with_paths(params)
    value_pairs, value_def = jax.tree_util.tree_flatten_with_path(unbox(value))
    if broadcast and value_def.num_leaves == 1 and value_def.num_nodes == 1:
        return [value_pairs[0][1]] * len(leaves)
    if value_def != treedef:
        where = _first_difference(paths, [p for p, _ in value_pairs], treedef, value_def)
        alternative = ", or one value for all of them" if broadcast else ""
        raise ValueError(f"{fn}: {arg} {where}; give {arg} with the same tree structure as the params{alternative}.")
    values = [x for _, x in value_pairs]
    for path, x, p in zip(paths, values, leaves):
        check_same_sharding(fn, arg, path, x, p)
    return values


def mesh_of(x: Any) -> Any:
    """The mesh ``x`` is laid out on, read from its type (also under ``jit``); None for no array or no mesh."""
    if not isinstance(x, jax.Array):
        return None
    mesh = getattr(jax.typeof(x).sharding, "mesh", None)
    return None if mesh is None or mesh.empty else mesh


def explicit_sharding(x: Any) -> Any:
    """The sharding of ``x`` when its mesh has explicit axes (part of its type, also under ``jit``), else None."""
    mesh = mesh_of(x)
    if mesh is None or jax.sharding.AxisType.Explicit not in getattr(mesh, "axis_types", ()):
        return None
    return jax.typeof(x).sharding


def _explicit_spec(x: Any) -> tuple[Any, ...] | None:
    sharding = explicit_sharding(x)
    if sharding is None:
        return None
    spec = tuple(sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def check_same_sharding(fn: str, arg: str, path: KeyPath, value: Any, param: Any) -> None:
    """Raises a ValueError naming the leaf when an array shaped like a parameter is split differently.

    Only with explicit mesh axes, where JAX itself refuses to mix the two (with an error
    that names neither the leaf nor the argument); with automatic axes XLA moves the
    value to the parameter's devices and nothing needs checking.
    """
    if jnp.ndim(param) == 0 or jnp.shape(value) != jnp.shape(param):
        return
    want, have = _explicit_spec(param), _explicit_spec(value)
    if want is not None and have is not None and want != have:
        raise ValueError(
            f"{fn}: {arg} for params{jax.tree_util.keystr(path)} is sharded as P{have}, but the parameter as "
            f"P{want}; give {arg} the params' sharding (jax.sharding.reshard(value, jax.typeof(param).sharding))."
        )


def resolve_mask(fn: str, mask: Any, params: Any, arg: str = "mask") -> list[bool]:
    """The mask (a tree of bools or a callable ``params -> tree``) as a list per leaf.

    ``None`` selects every leaf. Mask leaves must be booleans known now: Python or
    NumPy bools, or 0-d bool arrays. They decide which leaves a transform touches,
    which is static structure, not data; anything else (a string, a number, a traced
    value) raises a ``TypeError`` naming the leaf.
    """
    params = unbox(params)
    n = jax.tree_util.tree_structure(params).num_leaves
    if mask is None:
        return [True] * n
    tree = mask(params) if callable(mask) else mask
    paths, _, treedef = leaves_with_paths(params)
    pairs, mask_def = jax.tree_util.tree_flatten_with_path(unbox(tree))
    if mask_def != treedef:
        where = _first_difference(paths, [p for p, _ in pairs], treedef, mask_def)
        raise ValueError(
            f"{fn}: {arg} {where}; give {arg}= with the same tree structure as the "
            f"params (True where it applies), or a callable params -> {arg}."
        )
    return [_mask_bool(fn, arg, path, leaf) for path, leaf in pairs]


def _mask_bool(fn: str, arg: str, path: KeyPath, leaf: Any) -> bool:
    if isinstance(leaf, bool | np.bool_):
        return bool(leaf)
    if not isinstance(leaf, jax.core.Tracer) and getattr(leaf, "shape", None) == () and leaf.dtype == np.bool_:
        return bool(leaf)
    if isinstance(leaf, jax.core.Tracer) or hasattr(leaf, "shape"):
        kind = f"{type(leaf).__name__} of dtype {leaf.dtype} and shape {leaf.shape}"
    else:
        kind = f"{leaf!r} of type {type(leaf).__name__}"
    raise TypeError(
        f"{fn}: {arg} leaf at params{jax.tree_util.keystr(path)} must be a bool known now (Python, NumPy or "
        f"a 0-d bool array; not traced), got {kind}."
    )


def as_array(x: Any) -> jax.Array:
    """``x`` as a JAX array: Python scalars and NumPy arrays are converted, arrays kept."""
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


def is_inexact(x: Any) -> bool:
    """Whether ``x`` holds floating or complex values: the leaves a transform may change.

    Integer, bool and ``float0`` leaves (a step counter kept in the params, the
    gradient JAX gives for it) are never changed.
    """
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def acted_on(
    fn: str, mask: Any, tree: Any, *others: Sequence[Any], real_only: bool = False
) -> tuple[list[KeyPath], list[Any], list[int]]:
    """The paths and leaves of ``tree`` and the indices of the leaves a transform changes.

    A leaf is changed when ``mask`` selects it and it is floating or complex, in
    ``tree`` and in each of ``others`` (lists aligned with its leaves); integer leaves
    are skipped. With ``real_only`` a complex leaf that would be changed raises a
    ``TypeError`` naming it.
    """
    paths, leaves, _ = leaves_with_paths(tree)
    selected = resolve_mask(fn, mask, tree)
    picked = [
        i
        for i, s in enumerate(selected)
        if s and is_inexact(leaves[i]) and all(is_inexact(column[i]) for column in others)
    ]
    if real_only:
        for i in picked:
            dtype = jnp.result_type(leaves[i])
            if jnp.issubdtype(dtype, jnp.complexfloating):
                raise TypeError(
                    f"{fn}: params{jax.tree_util.keystr(paths[i])} is {dtype}, but {fn} takes real values only; "
                    "leave complex leaves out with mask=."
                )
    return paths, leaves, picked


def check_broadcast(fn: str, arg: str, path: KeyPath, value: Any, leaf: Any) -> None:
    """Raises a ValueError naming the leaf when ``value`` does not broadcast to ``leaf``'s shape.

    Schedules (callables) are not checked: their shape is known only at a step.
    """
    if callable(value):
        return
    have, want = jnp.shape(value), jnp.shape(leaf)
    try:
        fits = np.broadcast_shapes(have, want) == tuple(want)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"{fn}: {arg} has shape {have}, which does not broadcast to the shape {want} of "
            f"params{jax.tree_util.keystr(path)}; give {arg} as a scalar, an array that broadcasts to "
            "every leaf it applies to, or a tree with the params' structure."
        )


def check_axis(fn: str, axis: int, paths: Sequence[KeyPath], leaves: Sequence[Any], selector: str = "mask") -> None:
    """Raises a ValueError naming the leaf whose rank cannot hold ``axis``."""
    for path, leaf in zip(paths, leaves):
        ndim = jnp.ndim(leaf)
        if not -ndim <= axis < ndim:
            raise ValueError(
                f"{fn}: axis {axis} is out of range for params"
                f"{jax.tree_util.keystr(path)} with shape {jnp.shape(leaf)}; the axis "
                f"must lie in [{-ndim}, {ndim}). Exclude such leaves with {selector}=."
            )


def other_axes(ndim: int, axis: int) -> tuple[int, ...]:
    """All axes of an ``ndim`` array except ``axis``: the axes a per-unit norm sums."""
    axis = axis % ndim
    return tuple(a for a in range(ndim) if a != axis)


def compute_dtype(dtype: Any) -> Any:
    """The dtype a leaf's math runs in: float32 for bf16/f16 (docs/dtypes.md), else the leaf's own.

    float32, float64, complex64 and complex128 compute in themselves; anything
    narrower in float32. Written out rather than ``jnp.promote_types``, which refuses
    bf16 + f32 under ``jax_numpy_dtype_promotion="strict"``.
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating) or (jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize >= 4):
        return dtype
    return jnp.dtype(jnp.float32)


def real_dtype(dtype: Any) -> Any:
    """The real dtype of a leaf's norms and scale factors: float32 for complex64, float64 for complex128."""
    return jnp.dtype(jnp.finfo(compute_dtype(dtype)).dtype)


def wide(x: jax.Array) -> jax.Array:
    """``x`` in its compute dtype (see :func:`compute_dtype`)."""
    return x.astype(compute_dtype(x.dtype))


def real_for(value: Any, x: jax.Array) -> jax.Array:
    """A real hyperparameter or factor cast to ``x``'s real compute dtype.

    So that float32 hyperparameters meet float64 leaves (and float64 norms meet float32
    leaves) under strict dtype promotion, and the math runs in the leaf's precision.
    """
    return jnp.asarray(value).astype(real_dtype(x.dtype))


def scaled(x: jax.Array, factor: Any) -> jax.Array:
    """``x * factor`` for a real ``factor``, computed in ``x``'s compute dtype (complex kept)."""
    return wide(x) * real_for(factor, x).astype(compute_dtype(x.dtype))


def widest_real(leaves: Sequence[Any]) -> Any:
    """The widest :func:`real_dtype` of ``leaves`` (float32 for none): the dtype of a norm over them all."""
    dtypes = [real_dtype(jnp.result_type(x)) for x in leaves]
    return max(dtypes, key=lambda d: d.itemsize, default=jnp.dtype(jnp.float32))


def _magnitude(x: jax.Array) -> jax.Array:
    """``|x|`` in ``x``'s real compute dtype (the modulus of a complex value)."""
    return jnp.abs(wide(x))


def _abs_sq(x: jax.Array) -> jax.Array:
    """``|x|^2`` in ``x``'s real compute dtype, from the real and imaginary parts of a complex value."""
    w = wide(x)
    if jnp.issubdtype(w.dtype, jnp.complexfloating):
        return jnp.real(w) * jnp.real(w) + jnp.imag(w) * jnp.imag(w)
    return w * w


def safe_root(total: jax.Array, ord: float) -> jax.Array:
    """``total ** (1 / ord)`` with a finite derivative (0) at ``total == 0``, as optax's norms (NaN kept)."""
    nonzero = total != 0
    inside = jnp.where(nonzero, total, jnp.ones_like(total))
    root = jnp.sqrt(inside) if ord == 2 else inside ** (1.0 / ord)
    return jnp.where(nonzero, root, jnp.zeros_like(total))


def unit_norms(x: jax.Array, axis: int, ord: float = 2.0) -> jax.Array:
    """``ord``-norm of each slice along ``axis`` in ``x``'s real compute dtype, shaped to broadcast against ``x``."""
    other = other_axes(x.ndim, axis)
    if ord == 2:
        return safe_root(jnp.sum(_abs_sq(x), axis=other, keepdims=True), 2.0)
    a = _magnitude(x)
    if math.isinf(ord):
        return jnp.max(a, axis=other, keepdims=True, initial=0.0)
    if ord == 1:
        return jnp.sum(a, axis=other, keepdims=True)
    return safe_root(jnp.sum(a**ord, axis=other, keepdims=True), ord)


def leaf_power_sum(x: jax.Array, ord: float) -> jax.Array:
    """``sum |x|^ord`` of one leaf in its real compute dtype (``max |x|`` when ``ord`` is inf)."""
    if ord == 2:
        return jnp.sum(_abs_sq(x))
    a = _magnitude(x)
    if math.isinf(ord):
        return jnp.max(a, initial=0.0)
    if ord == 1:
        return jnp.sum(a)
    return jnp.sum(a**ord)


def combine_power_sums(sums: Sequence[jax.Array], ord: float) -> jax.Array:
    """The ``ord``-norm from per-leaf partial reductions (one scalar all-reduce), in the widest of their dtypes."""
    dtype = widest_real(sums)
    if not sums:
        return jnp.zeros([], dtype)
    sums = [s.astype(dtype) for s in sums]
    if math.isinf(ord):
        return jnp.max(jnp.stack(sums))
    total = sum(sums[1:], sums[0])
    if ord == 1:
        return total
    return safe_root(total, ord)


def global_norm(leaves: Sequence[jax.Array], ord: float = 2.0) -> jax.Array:
    """The ``ord``-norm of all leaves together, without a gather: each leaf reduces in its real
    compute dtype (float32 for bf16/f16, float64 for float64), the total in the widest."""
    return combine_power_sums([leaf_power_sum(x, ord) for x in leaves], ord)


def value_at(hyper: Any, count: jax.Array) -> Any:
    """A hyperparameter's value at step ``count``: schedules are called, values returned."""
    return hyper(count) if callable(hyper) else hyper
