"""Parameter selectors: which leaves a transform acts on (True = acts here, as in optax).

A selector is a pytree of bools with the params' structure or a callable
``params -> such a pytree``. The helpers here are callables, so that one selector serves
plain dicts, Flax linen params and Flax NNX ``State`` alike (NNX ``Variable`` boxes are
unwrapped first). Pruning masks, where True means *keep the weight*, live in
``jaxreg.pruning`` and are never passed as ``mask=``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxreg import _tree

__all__ = ["Mask", "all_params", "weights_only", "by_path", "mask_and", "mask_or", "mask_not", "masked"]

#: A selector: a pytree of bools with the params' structure (True = the transform acts here),
#: or a callable ``params -> pytree of bools``; None means every leaf.
Mask = Any


def all_params(params: optax.Params) -> Any:
    """Selects every leaf.

    Args:
      params: a pytree of arrays (NNX ``Variable`` boxes are unwrapped).

    Returns:
      A pytree of ``True`` with the structure of ``params``.
    """
    return jax.tree.map(lambda _: True, _tree.unbox(params))


def weights_only(params: optax.Params) -> Any:
    """Selects kernels and embeddings: leaves with two or more dimensions.

    Biases, LayerNorm/BatchNorm scales and other vectors and scalars are left out. This
    is the usual rule for weight decay (PyTorch users write it as "decay parameters with
    ``p.dim() >= 2``"); for a rule by name use :func:`by_path`.

    Args:
      params: a pytree of arrays (NNX ``Variable`` boxes are unwrapped).

    Returns:
      A pytree of bools, True on every leaf with ``ndim >= 2``.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.masks.weights_only({"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}})
      {'dense': {'bias': False, 'kernel': True}}
    """
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, _tree.unbox(params))


def by_path(pattern: str | re.Pattern[str]) -> Callable[[optax.Params], Any]:
    """Selects the leaves whose key path matches a regular expression.

    The path of a leaf is its keys joined by ``/``, e.g. ``'dense1/kernel'`` for
    ``params['dense1']['kernel']`` or ``'layers/0/weight'`` for a list entry; the
    pattern is searched anywhere in it (``re.search``), so ``'kernel|weight'`` selects
    every leaf named like a weight.

    Args:
      pattern: a regular expression (string or compiled).

    Returns:
      A callable ``params -> pytree of bools``.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.masks.by_path("kernel")({"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}})
      {'dense': {'bias': False, 'kernel': True}}
    """
    try:
        regex = re.compile(pattern)
    except (re.error, TypeError) as err:
        raise ValueError(f"by_path: pattern must be a regular expression, got {pattern!r} ({err}).") from None

    def select(params: optax.Params) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: regex.search(_tree.path_str(path)) is not None,
            _tree.unbox(params),
        )

    return select


def _combine(fn: str, masks: tuple[Mask, ...], reduce: Callable[[list[bool]], bool]) -> Callable[[optax.Params], Any]:
    if not masks:
        raise ValueError(f"{fn}: give at least one mask.")

    def select(params: optax.Params) -> Any:
        columns = [_tree.resolve_mask(fn, m, params) for m in masks]
        treedef = jax.tree.structure(_tree.unbox(params))
        return treedef.unflatten([reduce(list(row)) for row in zip(*columns)])

    return select


def mask_and(*masks: Mask) -> Callable[[optax.Params], Any]:
    """Selects the leaves that every given mask selects.

    Args:
      *masks: pytrees of bools or callables ``params -> mask``.

    Returns:
      A callable ``params -> pytree of bools``.
    """
    return _combine("mask_and", masks, all)


def mask_or(*masks: Mask) -> Callable[[optax.Params], Any]:
    """Selects the leaves that at least one given mask selects.

    Args:
      *masks: pytrees of bools or callables ``params -> mask``.

    Returns:
      A callable ``params -> pytree of bools``.
    """
    return _combine("mask_or", masks, any)


def mask_not(mask: Mask) -> Callable[[optax.Params], Any]:
    """Selects the leaves that ``mask`` leaves out.

    Args:
      mask: a pytree of bools or a callable ``params -> mask``.

    Returns:
      A callable ``params -> pytree of bools``.
    """
    return _combine("mask_not", (mask,), lambda row: not row[0])


def masked(inner: optax.GradientTransformation, mask: Mask) -> optax.GradientTransformationExtraArgs:
    """``optax.masked`` that also works inside ``nnx.Optimizer`` and names bad leaves.

    ``nnx.Optimizer`` calls ``tx.init`` with a ``State`` of boxed ``nnx.Variable`` s but
    ``tx.update`` with plain arrays, so a static mask tree built from one does not match
    the other and ``optax.masked`` fails. This wrapper unwraps the boxes before ``init``
    and ``update`` and checks the mask against the params, naming the first leaf path
    that differs. Use it to mask optax's own transforms; jaxreg's transforms take
    ``mask=`` directly.

    Args:
      inner: the transform to apply on the selected leaves.
      mask: pytree of bools or callable ``params -> mask``; True where ``inner`` acts.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; unselected updates pass unchanged.
    """

    def mask_fn(tree: Any) -> Any:
        selected = _tree.resolve_mask("masked", mask, tree)
        return jax.tree.structure(_tree.unbox(tree)).unflatten(selected)

    tx = optax.masked(inner, mask_fn)

    def init_fn(params: optax.Params) -> Any:
        return tx.init(_tree.unbox(params))

    def update_fn(updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra: Any) -> Any:
        new, state = tx.update(_tree.unbox(updates), state, _tree.unbox(params), **extra)
        return _tree.rebox_like(updates, jax.tree.leaves(new)), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
