"""Weight decay: coupled (PyTorch's ``weight_decay=`` in SGD/Adam) and decoupled (AdamW).

*Coupled* L2 adds ``rate * w`` to the gradient before the optimizer, so an adaptive
optimizer rescales it; this is what ``torch.optim.SGD(weight_decay=...)`` and
``torch.optim.Adam(weight_decay=...)`` do, and it equals the gradient of the penalty
``rate / 2 * ||w||^2``. *Decoupled* decay shrinks the parameters after the optimizer,
``w <- w - lr * rate * w``, independently of the adaptive scaling (Loshchilov & Hutter);
this is ``torch.optim.AdamW``.
"""

from __future__ import annotations

import chex
import jax
import optax

from jaxreg import _checks, _param_space, _rules, _tree
from jaxreg.masks import Mask

__all__ = ["coupled_weight_decay", "decoupled_weight_decay"]


def coupled_weight_decay(
    rate: chex.Numeric | optax.Schedule, mask: Mask = None
) -> optax.GradientTransformationExtraArgs:
    """Adds ``rate * w`` to the gradients: PyTorch's ``weight_decay`` in SGD and Adam.

    Place it *before* the optimizer. The update rule is ``g <- g + rate * w``, the
    gradient of ``rate / 2 * ||w||^2``: ``optax.add_decayed_weights``, with jaxreg's
    masks (which also work inside ``nnx.Optimizer``), argument checks, and the
    gradients' dtype kept when ``rate`` is a float32 array or schedule (optax's returns
    float32 updates for bf16 gradients then). PyTorch applies ``weight_decay`` to every
    parameter, biases included; pass ``mask=jaxreg.masks.weights_only`` to decay only
    the kernels.

    Args:
      rate: decay coefficient lambda >= 0 (float, array or schedule).
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.
    """
    fn = "coupled_weight_decay"
    _checks.check_nonnegative(fn, "rate", rate)

    def op(us: list[jax.Array], ps: list[jax.Array], count: jax.Array) -> list[jax.Array]:
        r = _tree.value_at(rate, count)
        return [_tree.wide(u) + _tree.scaled(p, r) for u, p in zip(us, ps)]

    tx = _param_space.updates_transform(fn, op, mask=mask, hypers=(("rate", rate),))
    return _rules.describe(
        tx, _param_space.count_rule("u = u + @s0 * wi;", lambda c: [_tree.value_at(rate, c)], mask, rate)
    )


def decoupled_weight_decay(
    rate: chex.Numeric | optax.Schedule,
    learning_rate: chex.Numeric | optax.Schedule | None = None,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """Shrinks the parameters by ``lr * rate`` of their old value: AdamW's weight decay.

    Place it *after* the optimizer. With ``w`` the params before the step and ``u`` the
    optimizer's update it returns ``u - lr * rate * w``, so that
    ``w_new = w + u - lr * rate * w``. ``optax.chain(optax.adam(lr),
    decoupled_weight_decay(wd, learning_rate=lr))`` is ``torch.optim.AdamW(lr=lr,
    weight_decay=wd)`` and ``optax.adamw(lr, weight_decay=wd)``; unlike ``optax.adamw``
    it composes with any optimizer, takes jaxreg masks, and its schedules count in its
    own state. Mind the defaults: AdamW's ``weight_decay`` is 1e-2 in PyTorch and 1e-4
    in optax.

    Args:
      rate: decay coefficient >= 0 (float, array or schedule).
      learning_rate: the optimizer's step size (float or schedule); None means 1, i.e.
        ``rate`` is the whole per-step shrink factor.
      mask: pytree of bools or callable ``params -> mask``; True where it applies.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in ``update``.

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    fn = "decoupled_weight_decay"
    _checks.check_nonnegative(fn, "rate", rate)
    lr = _checks.check_learning_rate(fn, learning_rate)

    def op(us: list[jax.Array], ps: list[jax.Array], count: jax.Array) -> list[jax.Array]:
        shrink = _tree.value_at(lr, count) * _tree.value_at(rate, count)
        return [_tree.wide(u) - _tree.scaled(p, shrink) for u, p in zip(us, ps)]

    tx = _param_space.updates_transform(fn, op, mask=mask, hypers=(("rate", rate), ("learning_rate", lr)))
    return _rules.describe(
        tx,
        _param_space.count_rule(
            "u = u - @s0 * wi;", lambda c: [_tree.value_at(lr, c) * _tree.value_at(rate, c)], mask, rate, lr
        ),
    )
