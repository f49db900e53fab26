"""``jaxreg.adam`` and ``jaxreg.sgd``: optax's optimizers with their element-wise rules.

Each *is* its optax optimizer (same ``update``, same state, so checkpoints and code that
reads ``state[0].mu`` carry over) and carries the :class:`~jaxreg._rules.Rule` that lets
:func:`jaxreg.chain` run it inside the one-pass step. Unlike optax, they check their
arguments when they are made, as ``torch.optim`` does.
"""

from __future__ import annotations

from typing import Any

import chex
import optax

from jaxreg import _checks, _rules

__all__ = ["adam", "sgd"]


def _check_fraction(fn: str, name: str, value: Any, closed: bool) -> None:
    """``value`` in ``[0, 1)`` (``closed``: ``[0, 1]``), when it is known now."""
    _checks.check_nonnegative(fn, name, value)
    arr = _checks.concrete(value)
    if arr is not None and not (arr <= 1 if closed else arr < 1).all():
        allowed = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{fn}: {name} must lie in {allowed}, got {value!r}.")


def _check_step_size(fn: str, learning_rate: Any) -> None:
    # torch.optim accepts a rate of 0 (a frozen step) and refuses a negative one.
    _checks.check_nonnegative(fn, "learning_rate", learning_rate)


def adam(
    learning_rate: chex.Numeric | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """``optax.adam`` with its element-wise form, so :func:`jaxreg.chain` can fuse it.

    The transformation *is* ``optax.adam(learning_rate, b1, b2, eps, eps_root)``: same
    ``update``, same state (``ScaleByAdamState`` and the learning rate's), so
    checkpoints and code that reads ``state[...].mu`` carry over. For AdamW chain it
    with :func:`jaxreg.decoupled_weight_decay` (``torch.optim.AdamW`` semantics). Unlike
    ``optax.adam`` it refuses, as ``torch.optim.Adam`` does, a negative or NaN rate,
    betas outside ``[0, 1)`` and a negative ``eps``.

    Args:
      learning_rate: step size >= 0 (float, scalar or schedule).
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to the root of the second moment, >= 0.
      eps_root: added to the second moment under the root, >= 0.

    Returns:
      ``optax.adam``'s transformation, carrying its rule.

    Raises:
      ValueError: an argument out of its range; TypeError: one that is not a number.
    """
    fn = "adam"
    _check_step_size(fn, learning_rate)
    _check_fraction(fn, "b1", b1, closed=False)
    _check_fraction(fn, "b2", b2, closed=False)
    _checks.check_nonnegative(fn, "eps", eps)
    _checks.check_nonnegative(fn, "eps_root", eps_root)
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
    """``optax.sgd`` with its element-wise form, so :func:`jaxreg.chain` can fuse it.

    The transformation *is* ``optax.sgd(learning_rate, momentum, nesterov)``: the
    heavy-ball trace ``t <- g + momentum * t`` (``nesterov``: the step is
    ``g + momentum * t``), scaled by ``-learning_rate``; same state
    (``TraceState`` and the learning rate's). That is ``torch.optim.SGD``'s update with
    ``dampening=0`` (the tests hold 100 steps of the two within 1e-5); for its
    ``weight_decay`` put :func:`jaxreg.coupled_weight_decay` before it in the chain.
    Unlike ``optax.sgd`` it refuses, as ``torch.optim.SGD`` does, a negative or NaN
    rate and a momentum outside ``[0, 1]``.

    Args:
      learning_rate: step size >= 0 (float, scalar or schedule).
      momentum: the trace's decay, in [0, 1]; None (the default): plain SGD, no state per leaf.
      nesterov: Nesterov momentum (needs ``momentum``).

    Returns:
      ``optax.sgd``'s transformation, carrying its rule.

    Raises:
      ValueError: an argument out of its range, or ``nesterov`` without ``momentum``;
        TypeError: one that is not a number.
    """
    fn = "sgd"
    _check_step_size(fn, learning_rate)
    if momentum is not None:
        _check_fraction(fn, "momentum", momentum, closed=True)
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
