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
        for this rule's scalars, ``@m0[i]``, ... for its per-leaf state slots,
        ``@k0[i]``, ... for its inputs and ``@c0 += ...;`` for its counters, each kind
        numbered from 0 without gaps in the order the rule gives them. They are the
        rule's own: the code generator renumbers them, and a rule whose placeholders
        do not match what it gives is refused (here, or when the chain is planned).
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

    def __post_init__(self):
        _check_placeholders(self)

    def count(self, kind: str) -> int:
        """How many placeholders of ``kind`` the rule names: ``"s"`` scalars, ``"m"`` state
        slots, ``"k"`` inputs, ``"c"`` counters (they are numbered from 0 without gaps)."""
        return len(set(re.findall(rf"@{kind}(\d+)", self.code + (self.factor or ""))))

    @property
    def has_inputs(self) -> bool:
        """Whether the rule reads per-leaf arrays besides its state slots (``@k0``, ...)."""
        return self.count("k") > 0

    @property
    def n_counters(self) -> int:
        """How many counters (``@c0``, ``@c1``, ...) the code increments."""
        return self.count("c")


# How each kind of placeholder must be written: a scalar is a value, a slot or an input is
# read at the element ``i``, a counter is incremented. The code generator renumbers them
# into the kernel's own variables, so a rule can reach only what it names here.
_FORMS = {"s": r"@s\d+(?![\d\[])", "m": r"@m\d+\[i\]", "k": r"@k\d+\[i\]", "c": r"@c\d+ \+= "}
_KINDS = {"s": "scalars", "m": "state slots", "k": "inputs", "c": "counters"}


def _check_placeholders(rule: Rule) -> None:
    """Raises a ValueError at construction for a placeholder a rule cannot own: an unknown
    kind, one written in the wrong form, a gap in the numbering, or a factor that reads
    anything but scalars; and for counters without ``record`` (or the reverse)."""
    for where, text, kinds in (("code", rule.code, "smkc"), ("factor", rule.factor or "", "s")):
        for token in re.findall(r"@\w*", text):
            if not re.fullmatch(r"@[smkc]\d+", token) or token[1] not in kinds:
                allowed = ", ".join(f"@{k}0 ({_KINDS[k]})" for k in kinds)
                raise ValueError(f"Rule: {where} names {token}, which is not one of {allowed}, ...: {text!r}")
        for kind in kinds:
            used = len(re.findall(rf"@{kind}\d+", text))
            if len(re.findall(_FORMS[kind], text)) != used:
                raise ValueError(
                    f"Rule: {where} writes a placeholder of its {_KINDS[kind]} in the wrong form: {text!r}"
                )
    for kind, name in _KINDS.items():
        numbers = {int(n) for n in re.findall(rf"@{kind}(\d+)", rule.code + (rule.factor or ""))}
        if numbers != set(range(len(numbers))):
            missing = min(set(range(max(numbers) + 1)) - numbers)
            raise ValueError(
                f"Rule: names @{kind}{max(numbers)} but not @{kind}{missing}; a rule's {name} are numbered "
                f"@{kind}0, @{kind}1, ... in the order it gives them: {rule.code!r}"
            )
    if (rule.count("c") > 0) != (rule.record is not None):
        raise ValueError(
            f"Rule: a rule that counts (@c0 += ...) needs record=, and only such a rule takes it: {rule.code!r}"
        )
    if rule.factor is not None and not re.search(r"\bf = ", rule.factor):
        raise ValueError(f"Rule: factor must set f from the unit's sum of squares ss: {rule.factor!r}")


def check_counts(member: int, rule: Rule, state: Any, n_scalars: int | None = None) -> None:
    """Raises unless the rule's state gives exactly the slots and inputs (and, when
    ``n_scalars`` is given, the scalars) that its code names."""
    given = {"m": len(rule.slots(state)), "k": len(rule.inputs(state)), "s": n_scalars}
    for kind, n in given.items():
        if n is not None and n != rule.count(kind):
            raise ValueError(
                f"jaxreg.chain: member {member}'s rule names {rule.count(kind)} {_KINDS[kind]} "
                f"(@{kind}0, ...) but gives {n}"
            )


class Fusable(optax.GradientTransformationExtraArgs):
    """An optax transformation that also carries its element-wise :class:`Rule`."""

    rule: Rule


def describe(tx: optax.GradientTransformation, rule: Rule | None) -> optax.GradientTransformationExtraArgs:
    """``tx`` with ``rule`` attached (``tx`` unchanged when there is no rule). Like every
    optax ``GradientTransformationExtraArgs``, it takes extra keyword arguments such as
    ``value=`` in ``update`` (and ignores them when ``tx`` does not read them)."""
    if rule is None:
        return tx
    tx = optax.with_extra_args_support(tx)
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
