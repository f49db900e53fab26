"""The element-wise form of a transform, which :func:`jaxreg.chain` fuses into one pass.

A transform that has one carries a :class:`Rule` beside its optax ``init``/``update``:
a few C++ statements that update one element, the scalars they read at this step and
how the transform's state advances. ``jaxreg.chain`` writes the rules of its members
one after the other into a single loop (``jaxreg/fused.py``); the optax ``update`` stays
the reference the fused step is tested against.

A *per-unit* rule (max-norm, group lasso, the L2 ball) rescales each unit of a
leaf (a slice along an axis, the whole leaf, or all the leaves it selects together) by a
factor of the unit's norm: its
``factor`` statements turn the unit's sum of squares ``ss`` into ``f``, and its ``code``
multiplies by ``f``. The fused pass starts a new stage of the leaf there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import optax


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one transform updates one element, for the fused single pass.

    Attributes:
      code: C++ statements on ``float u`` (the update flowing down the chain) and
        ``const float wi`` (the parameter before the step), with ``@s0``, ``@s1``, ...
        for this rule's scalars and ``@m0[i]``, ... for its per-leaf state slots.
      scalars: ``(state, norm) -> [scalar, ...]``, this step's values of ``@s0``, ...
        (``norm`` is the gradients' global 2-norm for a ``global_norm`` rule, each leaf's
        gradient 2-norm, shape ``(n_leaves,)``, for a ``leaf_norms`` rule, else None). A
        value of shape ``(n_leaves,)`` gives each leaf its own ``@sK``.
      advance: ``(state, new_slot_trees, norm) -> new state``.
      slots: ``state -> [tree, ...]``, the per-leaf state arrays ``@m0``, ... (shaped
        like the params) that the pass reads and rewrites in place.
      inputs: ``state -> [tree, ...]``, per-leaf bool arrays the pass reads but does not
        write (``@k0[i]``, ...; e.g. a pruning mask); not after a per-unit rule.
      mask: the transform's mask (None, a tree of bools or a callable).
      global_norm: the rule needs the gradients' global norm (read before the pass).
      leaf_norms: the rule needs each leaf's gradient norm (read before the pass).
      param_space: the new value ``wi + u`` depends on ``wi + u`` alone (a prox or a
        projection), so the rule may follow a per-unit rule.
      factor: for a per-unit rule, C++ statements setting ``float f`` from the unit's
        ``const float ss`` (the sum of squares of its new values); its ``code`` reads
        ``f``. None for an element-wise rule.
      axis: a per-unit rule's units are the slices along ``axis``; None: the whole leaf.
      joint: a per-unit rule with one unit made of all the leaves it selects (a global
        ball): its factor comes from the sum of squares over all of them.
      record: for a rule whose ``code`` counts elements (``@c0 += condition;``, ...;
        not after a per-unit rule): ``(state, fractions) -> state``, given the advanced
        state and each counter's count over the elements the rule saw, as a fraction.
    """

    code: str
    scalars: Callable[[Any, Any], Sequence[Any]]
    advance: Callable[[Any, Sequence[Any], Any], Any]
    slots: Callable[[Any], Sequence[Any]] = lambda state: ()
    inputs: Callable[[Any], Sequence[Any]] = lambda state: ()
    mask: Any = None
    global_norm: bool = False
    leaf_norms: bool = False
    param_space: bool = False
    factor: str | None = None
    axis: int | None = None
    joint: bool = False
    record: Callable[[Any, Sequence[Any]], Any] | None = None

    @property
    def has_inputs(self) -> bool:
        """Whether the rule reads per-leaf arrays besides its state slots (``@k0``, ...)."""
        return re.search(r"@k\d", self.code) is not None

    @property
    def n_counters(self) -> int:
        """How many counters (``@c0``, ``@c1``, ...) the code increments."""
        return len(set(re.findall(r"@c(\d+)", self.code)))


class Fusable(optax.GradientTransformationExtraArgs):
    """An optax transformation that also carries its element-wise :class:`Rule`."""

    rule: Rule


def describe(tx: optax.GradientTransformation, rule: Rule | None) -> optax.GradientTransformationExtraArgs:
    """``tx`` with ``rule`` attached (``tx`` unchanged when there is no rule)."""
    if rule is None:
        return tx
    fusable = Fusable(tx.init, tx.update)
    fusable.rule = rule
    return fusable


def rule_of(tx: Any) -> Rule | None:
    """The rule a transformation carries, if any."""
    return getattr(tx, "rule", None)


def is_scalar(value: Any) -> bool:
    """A hyperparameter the fused pass can take: a Python number, a 0-d array or a schedule."""
    return callable(value) or isinstance(value, int | float) or getattr(value, "shape", None) == ()


def clip_code(x: str, lo: str, hi: str) -> str:
    """C++ for ``jnp.clip(x, lo, hi)``, NaN kept (comparisons with NaN are false)."""
    return f"{x} = {x} < {lo} ? {lo} : {x}; {x} = {x} > {hi} ? {hi} : {x};"


def land_within_code(lo: str, hi: str) -> str:
    """C++ for ``_param_space.land_within``: where ``wi + u`` rounds outside
    ``[lo, hi]``, move ``u`` one ulp inward, on the bits (branch-free, so it vectorizes)."""
    return (
        "{ const float landed = wi + u; int32_t b = __builtin_bit_cast(int32_t, u);"
        f" const int32_t up = landed < {lo}, down = landed > {hi};"
        " const int32_t neg = (int32_t)((uint32_t)b >> 31);"
        " const int32_t away = (up & (neg ^ 1)) | (down & neg);"
        " int32_t moved = b + 2 * away - 1;"
        " moved = u == 0.0f ? (int32_t)(1u | ((uint32_t)down << 31)) : moved;"
        " b = (up | down) ? moved : b; u = __builtin_bit_cast(float, b); }"
    )
