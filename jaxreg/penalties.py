"""Loss-side penalties: differentiable (or subdifferentiable) terms to add to the loss.

Each returns a float32 scalar summed over the leaves a mask selects. Adding a penalty to
the loss regularizes through the gradient (the "soft" way); the matching transforms in
:mod:`jaxreg.proximal` and :mod:`jaxreg.decay` do the same through the update and, for
L1, give exact zeros. The conventions match those transforms: the L2 terms carry a 1/2,
so that ``grad(l2(w, lam)) == lam * w``, the update ``coupled_weight_decay(lam)`` adds.

Derivatives at the kinks are PyTorch's: ``|w|`` has gradient 0 at ``w = 0`` (as
``torch.abs``), and a norm has gradient 0 where all its entries are 0 (as
``torch.linalg.vector_norm``), so a zero-initialized bias stays finite and unmoved by the
penalty, where the plain ``jnp.abs`` and ``jnp.sqrt`` give ``+strength`` and NaN there.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from jaxreg import _checks, _tree
from jaxreg.masks import Mask

__all__ = ["l1", "l2", "elastic_net", "group_lasso", "activity_l1", "orthogonal"]

# keras.backend.epsilon(): keras.ops.normalize caps 1 / ||x|| at 1 / epsilon.
_KERAS_EPSILON = 1e-7


def _selected(fn: str, params: optax.Params, mask: Mask) -> list[jax.Array]:
    _, leaves, _ = _tree.leaves_with_paths(params)
    return [x for x, keep in zip(leaves, _tree.resolve_mask(fn, mask, params)) if keep]


def _total(terms: list[jax.Array]) -> jax.Array:
    return sum(terms, jnp.zeros([], jnp.float32))


@jax.custom_jvp
def _abs(x: jax.Array) -> jax.Array:
    """``|x|`` with derivative ``sign(x)``: 0 at 0, as ``torch.abs`` (``jnp.abs`` gives 1)."""
    return jnp.abs(x)


@_abs.defjvp
def _abs_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (t,) = primals, tangents
    return jnp.abs(x), jnp.sign(x) * t


def _l1_norm(x: jax.Array) -> jax.Array:
    return jnp.sum(_abs(x.astype(jnp.float32)))


def _unit_norms(x: jax.Array, axis: int) -> jax.Array:
    """2-norm (float32) of each slice along ``axis``, with gradient 0 at an all-zero slice.

    The square root is taken of 1 where the sum of squares is 0 and the result replaced by
    0, so that no infinite derivative of ``sqrt`` at 0 reaches the gradient (where it
    would make NaN); elsewhere it is ``x / ||x||``, as ``torch.linalg.vector_norm``. A NaN
    entry still gives a NaN norm.
    """
    wide = x.astype(jnp.float32)
    squares = jnp.sum(wide * wide, axis=_tree.other_axes(x.ndim, axis))
    zero = squares == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, squares)))


def l1(params: optax.Params, strength: chex.Numeric = 1.0, mask: Mask = None) -> jax.Array:
    """``strength * sum |w|`` over the selected leaves.

    Args:
      params: a pytree of arrays (NNX ``State`` works too).
      strength: coefficient lambda >= 0.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      A float32 scalar.
    """
    _checks.check_nonnegative("l1", "strength", strength)
    return strength * _total([_l1_norm(x) for x in _selected("l1", params, mask)])


def l2(params: optax.Params, strength: chex.Numeric = 1.0, mask: Mask = None) -> jax.Array:
    """``strength / 2 * sum w^2`` over the selected leaves (note the 1/2).

    The 1/2 makes the gradient ``strength * w``, the convention of PyTorch's
    ``weight_decay`` and of :func:`jaxreg.coupled_weight_decay`. The source articles
    write the penalty as ``lambda * sum(w^2)``: that is ``l2(params, 2 * lambda)``.

    Args:
      params: a pytree of arrays (NNX ``State`` works too).
      strength: coefficient lambda >= 0.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      A float32 scalar.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.penalties.l2({"w": jnp.array([3.0, 4.0])}, 0.1)
      Array(1.25, dtype=float32)
    """
    _checks.check_nonnegative("l2", "strength", strength)
    leaves = _selected("l2", params, mask)
    return strength / 2 * _total([_tree.leaf_power_sum(x, 2.0) for x in leaves])


def elastic_net(
    params: optax.Params, l1_strength: chex.Numeric, l2_strength: chex.Numeric, mask: Mask = None
) -> jax.Array:
    """``l1_strength * ||w||_1 + l2_strength / 2 * ||w||^2``: the objective of ``elastic_net_prox``.

    scikit-learn's ``ElasticNet(alpha, l1_ratio)`` penalty is
    ``elastic_net(w, alpha * l1_ratio, alpha * (1 - l1_ratio))``.

    Args:
      params: a pytree of arrays (NNX ``State`` works too).
      l1_strength: L1 coefficient >= 0.
      l2_strength: L2 coefficient >= 0.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      A float32 scalar.
    """
    _checks.check_nonnegative("elastic_net", "l1_strength", l1_strength)
    _checks.check_nonnegative("elastic_net", "l2_strength", l2_strength)
    return l1(params, l1_strength, mask) + l2(params, l2_strength, mask)


def group_lasso(params: optax.Params, strength: chex.Numeric = 1.0, axis: int = -1, mask: Mask = None) -> jax.Array:
    """``strength * sum_g ||w_g||_2`` with groups the slices along ``axis``.

    The objective of :func:`jaxreg.group_lasso_prox`, with the same axis convention:
    ``axis`` indexes the groups (units), norms run over the other axes.

    Args:
      params: a pytree of arrays (NNX ``State`` works too).
      strength: coefficient lambda >= 0.
      axis: the axis that indexes the groups.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      A float32 scalar.
    """
    fn = "group_lasso"
    _checks.check_nonnegative(fn, "strength", strength)
    axis = _checks.check_axis_arg(fn, axis)
    paths, leaves, _ = _tree.leaves_with_paths(params)
    keep = _tree.resolve_mask(fn, mask, params)
    chosen = [(p, x) for p, x, k in zip(paths, leaves, keep) if k]
    _tree.check_axis(fn, axis, [p for p, _ in chosen], [x for _, x in chosen])
    return strength * _total([jnp.sum(_unit_norms(x, axis)) for _, x in chosen])


def activity_l1(activations: Any, strength: chex.Numeric = 1.0) -> jax.Array:
    """``strength * sum_a mean_batch sum_units |a|``: an L1 penalty on activations.

    Sparse representations (third source article): penalize the hidden activations,
    not the weights. ``activations`` is any pytree of arrays whose first axis is the
    batch, e.g. what ``nnx.capture(model, nnx.Intermediate)(x)`` returns for a
    :class:`jaxreg.nn.MLP` built with ``record_activations=True``. Each array's
    absolute values are summed over its units and averaged over the batch, like Keras'
    ``ActivityRegularization(l1=strength)`` divided by the batch size.

    Args:
      activations: a pytree of ``(batch, ...)`` arrays (NNX ``State`` works too).
      strength: coefficient >= 0.

    Returns:
      A float32 scalar.
    """
    _checks.check_nonnegative("activity_l1", "strength", strength)
    leaves = jax.tree.leaves(_tree.unbox(activations))
    terms = [_l1_norm(a) / max(a.shape[0], 1) if a.ndim else _l1_norm(a) for a in leaves]
    return strength * _total(terms)


def _normalized_rows(x: jax.Array) -> jax.Array:
    """The rows of ``x`` scaled to unit 2-norm as ``keras.ops.normalize(x, axis=1)`` scales them.

    Keras multiplies by ``min(rsqrt(sum x^2), 1 / epsilon)``, so a row with a norm below
    ``epsilon = 1e-7`` is scaled by ``1e7`` and an all-zero row stays zero. The ``rsqrt``
    is taken of 1 where the cap applies, so that its infinite derivative at 0 never
    reaches the gradient (Keras' own gradient is NaN at an all-zero row).
    """
    squares = jnp.sum(x * x, axis=1, keepdims=True)
    uncapped = squares > _KERAS_EPSILON**2
    return x * jnp.where(uncapped, jax.lax.rsqrt(jnp.where(uncapped, squares, 1.0)), 1 / _KERAS_EPSILON)


def _mean_abs_cosine(x: jax.Array) -> jax.Array:
    """Mean ``|cos|`` over the pairs of distinct rows of a 2-D float32 ``x`` (0 with fewer than 2 rows)."""
    n = x.shape[0]
    if n < 2:
        return jnp.zeros([], jnp.float32)
    unit = _normalized_rows(x)
    gram = jnp.matmul(unit, unit.T, precision=jax.lax.Precision.HIGHEST)
    off_diagonal = jnp.where(jnp.eye(n, dtype=bool), 0.0, gram)
    return jnp.sum(_abs(off_diagonal)) / (n * (n - 1))


def orthogonal(params: optax.Params, factor: chex.Numeric, mode: str = "rows", mask: Mask = None) -> jax.Array:
    """``factor * mean_{i != j} |<u_i, u_j>|`` over the L2-normalized rows (or columns) of each 2-D leaf.

    Keras 3's ``regularizers.OrthogonalRegularizer(factor, mode)``: zero when the rows
    (``mode="rows"``) or the columns (``mode="columns"``) are orthogonal, at most
    ``factor`` when they are parallel, whatever their lengths. The rows are normalized as
    ``keras.ops.normalize`` does (``1 / ||row||`` capped at ``1e7``, so an all-zero row
    stays zero and counts as orthogonal to every other), the Gram matrix of the unit rows
    is formed, and ``factor`` times the mean absolute value of its ``n (n - 1)``
    off-diagonal entries is returned, Keras' ``factor * 0.5 * sum|off-diagonal| /
    (n (n - 1) / 2)``. Where Keras differs: its gradient is NaN at an all-zero row
    (``rsqrt(0)`` is infinite; seen on its JAX backend) and its penalty NaN for a single
    row (0 / 0 pairs); here the gradient there is finite (0 through the zero row, as
    ``|x|`` has derivative 0 at 0 in this module) and a single row gives 0. Keras takes
    one tensor; this takes a pytree and sums the penalty over the leaves ``mask`` selects
    (a lone array is a pytree of one leaf).

    For a ``Dense`` kernel ``(in, out)``, ``mode="columns"`` makes the weight vectors of
    the ``out`` units (the columns, of length ``in``) orthogonal; ``mode="rows"`` the
    ``in`` rows, one per input (Keras' example uses rows). A conv kernel ``HWIO`` is not
    2-D: reshape it to ``(-1, O)`` first, or leave it out with ``mask=``.

    On sown activations (``out, acts = nnx.capture(model, nnx.Intermediate)(x)`` for a
    :class:`jaxreg.nn.MLP` built with ``record_activations=True``), each array is
    ``(batch, units)``: ``mode="columns"`` compares units, each seen as its vector of
    activations over the batch, and so decorrelates the features (the useful case);
    ``mode="rows"`` compares examples. Keras' ``activity_regularizer=`` divides the
    penalty by the batch size; pass ``factor / batch`` for its numbers. Conv feature
    maps ``(batch, H, W, C)`` need a reshape to ``(-1, C)`` first.

    Args:
      params: a pytree of 2-D arrays (NNX ``State`` works too), or one 2-D array.
      factor: coefficient >= 0 (Keras' default is 0.01).
      mode: ``"rows"`` or ``"columns"``: the vectors that should be orthogonal.
      mask: pytree of bools or callable ``params -> mask``; True where it applies. Every
        selected leaf must be 2-D.

    Returns:
      A float32 scalar.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.penalties.orthogonal(jnp.array([[1.0, 0.0], [1.0, 1.0]]), 0.1)
      Array(0.07071068, dtype=float32)
    """
    fn = "orthogonal"
    _checks.check_nonnegative(fn, "factor", factor)
    if mode not in ("rows", "columns"):
        raise ValueError(f"{fn}: mode must be 'rows' or 'columns', got {mode!r}.")
    paths, leaves, _ = _tree.leaves_with_paths(params)
    chosen = [(p, x) for p, x, k in zip(paths, leaves, _tree.resolve_mask(fn, mask, params)) if k]
    for path, x in chosen:
        if jnp.ndim(x) != 2:
            raise ValueError(
                f"{fn}: params{jax.tree_util.keystr(path)} has shape {jnp.shape(x)}, but the penalty needs "
                "2-D arrays; reshape a conv kernel or feature map to (-1, channels) first, or exclude "
                "the leaf with mask=."
            )
    wide = [jnp.asarray(x).astype(jnp.float32) for _, x in chosen]
    return factor * _total([_mean_abs_cosine(x if mode == "rows" else x.T) for x in wide])
