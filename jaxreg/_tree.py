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

    ``None`` selects every leaf. Mask leaves must be Python or NumPy booleans: they
    decide which leaves a transform touches, which is static structure, not data.
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
    out = []
    for path, leaf in pairs:
        if isinstance(leaf, jax.core.Tracer) or getattr(leaf, "shape", ()) != ():
            raise TypeError(
                f"{fn}: {arg} leaf at params{jax.tree_util.keystr(path)} must be a Python or NumPy "
                f"bool (static), got {type(leaf).__name__} with shape {getattr(leaf, 'shape', '?')}."
            )
        out.append(bool(leaf))
    return out


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
    """float32, or the dtype itself when wider: bf16/f16 math runs in float32 (principle 7).

    Written out rather than ``jnp.promote_types``, which refuses bf16 + f32 under
    ``jax_numpy_dtype_promotion="strict"``.
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize >= 4:
        return dtype
    return jnp.dtype(jnp.float32)


def wide(x: jax.Array) -> jax.Array:
    """``x`` in its compute dtype (see :func:`compute_dtype`)."""
    return x.astype(compute_dtype(x.dtype))


def unit_norms(x: jax.Array, axis: int, ord: float = 2.0) -> jax.Array:
    """``ord``-norm (float32) of each slice along ``axis``, shaped to broadcast against ``x``."""
    other = other_axes(x.ndim, axis)
    a = jnp.abs(x.astype(jnp.float32))
    if ord == 2:
        return jnp.sqrt(jnp.sum(a * a, axis=other, keepdims=True))
    if math.isinf(ord):
        return jnp.max(a, axis=other, keepdims=True, initial=0.0)
    if ord == 1:
        return jnp.sum(a, axis=other, keepdims=True)
    return jnp.sum(a**ord, axis=other, keepdims=True) ** (1.0 / ord)


def leaf_power_sum(x: jax.Array, ord: float) -> jax.Array:
    """``sum |x|^ord`` of one leaf in float32 (``max |x|`` when ``ord`` is inf)."""
    a = jnp.abs(x.astype(jnp.float32))
    if math.isinf(ord):
        return jnp.max(a, initial=0.0)
    if ord == 2:
        return jnp.sum(a * a)
    if ord == 1:
        return jnp.sum(a)
    return jnp.sum(a**ord)


def combine_power_sums(sums: Sequence[jax.Array], ord: float) -> jax.Array:
    """The ``ord``-norm from per-leaf partial reductions (one scalar all-reduce)."""
    if not sums:
        return jnp.zeros([], jnp.float32)
    if math.isinf(ord):
        return jnp.max(jnp.stack(sums))
    total = sum(sums[1:], sums[0])
    if ord == 1:
        return total
    if ord == 2:
        return jnp.sqrt(total)
    return total ** (1.0 / ord)


def global_norm(leaves: Sequence[jax.Array], ord: float = 2.0) -> jax.Array:
    """The ``ord``-norm of all leaves together, accumulated in float32 without a gather."""
    return combine_power_sums([leaf_power_sum(x, ord) for x in leaves], ord)


def value_at(hyper: Any, count: jax.Array) -> Any:
    """A hyperparameter's value at step ``count``: schedules are called, values returned."""
    return hyper(count) if callable(hyper) else hyper
