"""Sparsity reports: how much of each leaf, and of the whole tree, is pruned."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _tree

__all__ = ["LeafSparsity", "SparsityReport", "sparsity_report"]


class LeafSparsity(NamedTuple):
    """One leaf's line in a :class:`SparsityReport`."""

    path: str  # the leaf's key path, as jax.tree_util.keystr writes it
    shape: tuple[int, ...]
    size: int  # number of entries
    pruned: int  # entries pruned (False in a mask) or exactly zero (in params)

    @property
    def sparsity(self) -> float:
        """The pruned fraction of the leaf (0 for an empty leaf)."""
        return self.pruned / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Pruned counts per leaf and in total; ``str(report)`` is a printable table."""

    leaves: tuple[LeafSparsity, ...]
    #: ``(path, dtype)`` of each leaf left out: neither bool nor floating point (RNG keys, counters).
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def size(self) -> int:
        """Number of entries in all leaves."""
        return sum(leaf.size for leaf in self.leaves)

    @property
    def pruned(self) -> int:
        """Number of pruned (or zero) entries in all leaves."""
        return sum(leaf.pruned for leaf in self.leaves)

    @property
    def sparsity(self) -> float:
        """The pruned fraction of all entries together."""
        return self.pruned / self.size if self.size else 0.0

    def table(self) -> str:
        """The report as a fixed-width text table, one line per leaf and a total.

        Returns:
          The table as a string.
        """
        rows = [(leaf.path, str(leaf.shape), leaf.size, leaf.pruned, leaf.sparsity) for leaf in self.leaves]
        rows.append(("total", "", self.size, self.pruned, self.sparsity))
        width = max([len("leaf")] + [len(r[0]) for r in rows])
        shape_width = max([len("shape")] + [len(r[1]) for r in rows])
        lines = [f"{'leaf':<{width}}  {'shape':<{shape_width}}  {'size':>12}  {'pruned':>12}  {'sparsity':>8}"]
        for i, (path, shape, size, pruned, frac) in enumerate(rows):
            if i == len(rows) - 1:
                lines.append("-" * len(lines[0]))
            lines.append(f"{path:<{width}}  {shape:<{shape_width}}  {size:>12,}  {pruned:>12,}  {frac:>8.2%}")
        if self.skipped:
            lines.append("skipped (neither bool nor float): " + ", ".join(f"{p} {d}" for p, d in self.skipped))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def sparsity_report(tree: Any) -> SparsityReport:
    """Counts the pruned entries of a pruning mask, or the exact zeros of params.

    A bool leaf is read as a pruning mask (``False`` = pruned); a floating-point leaf
    as parameters, whose exact zeros (``0.0`` and ``-0.0``) are counted as pruned, so
    the report of ``apply_mask(params, keep)`` matches that of ``keep`` unless some
    kept weights are zero. Other leaves (integer counters, RNG keys: any model with
    ``nnx.Rngs`` or dropout holds both) are never pruned; they are left out of the
    counts and listed in ``.skipped``. The counts are reduced on the device, leaf by
    leaf, and only the scalars are fetched. Call it outside ``jit``; it returns Python
    numbers. The counterpart of summing ``(module.weight_mask == 0)`` over modules in
    PyTorch.

    Args:
      tree: a pruning mask, a pytree of parameters or an NNX module or ``State`` (NNX
        ``Variable`` boxes are unwrapped); mixed trees are read leaf by leaf.

    Returns:
      A :class:`SparsityReport`: ``.leaves`` (path, shape, size, pruned, sparsity per
      leaf), ``.size``, ``.pruned``, ``.sparsity`` for the whole tree, ``.skipped``
      (path and dtype of each leaf left out), and ``str()`` / ``.table()`` for a
      printable table.
    """
    all_paths, leaves, _ = _tree.leaves_with_paths(tree)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        raise TypeError("sparsity_report: got traced values; call it outside jit (it returns Python numbers).")
    paths, reported, counts, skipped = [], [], [], []
    for path, x in zip(all_paths, leaves):
        dtype = jnp.result_type(x)
        if dtype == jnp.bool_:
            counts.append(jnp.sum(~jnp.asarray(x)))
        elif jnp.issubdtype(dtype, jnp.inexact):
            counts.append(jnp.sum(jnp.asarray(x) == 0))
        else:
            skipped.append((jax.tree_util.keystr(path), str(dtype)))
            continue
        paths.append(path)
        reported.append(x)
    counts = jax.device_get(counts)
    return SparsityReport(
        tuple(
            LeafSparsity(
                jax.tree_util.keystr(path),
                tuple(jnp.shape(x)),
                int(np.prod(jnp.shape(x), dtype=np.int64)),
                int(c),
            )
            for path, x, c in zip(paths, reported, counts)
        ),
        tuple(skipped),
    )
