"""Weight averaging: an exponential moving average (EMA) and stochastic weight averaging (SWA) of the params.

Both are pure state machines over a pytree of params: ``state = averaging.init(params)``,
then ``state = averaging.update(state, params)`` after optimizer steps, and
``state.averaged`` is the average. The numbers are those of PyTorch's
``torch.optim.swa_utils.AveragedModel``: the first averaged params are copied, then

* :func:`ema`: ``averaged = decay * averaged + (1 - decay) * params``
  (``multi_avg_fn=get_ema_multi_avg_fn(decay)``, torch's decay convention);
* :func:`swa`: ``averaged = averaged + (params - averaged) / (count + 1)``, the running
  mean of the ``count + 1`` params averaged (``AveragedModel``'s default).

How they differ from their cousins: ``optax.ema`` averages the *updates* a transform
emits, not the params, and starts from zero (with optional debiasing); Keras'
``use_ema=True`` starts the average at the initial weights and updates it every step.
Here, as in torch, the average starts at the first averaged params, and ``start`` and
``every`` choose which updates are averaged (torch's loop calls ``update_parameters``
only from ``swa_start`` on). Before the first averaged update, ``averaged`` follows the
params, so it is always the weights to evaluate. Only inexact (floating or complex)
leaves are averaged; other leaves take the latest value.

Batch normalization: averaged weights do not match the running statistics of any model
that was trained (torch's warning for SWA). :func:`update_batch_stats` recomputes them
with one pass over the training inputs, as ``torch.optim.swa_utils.update_bn`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxreg import _checks, _tree

__all__ = ["AveragingState", "WeightAveraging", "ema", "swa", "update_batch_stats"]


class AveragingState(NamedTuple):
    """State of :class:`WeightAveraging`; every field is an array (or a pytree of them), so it jits and vmaps."""

    averaged: Any  # the average of the params averaged so far (the latest params before the first)
    count: jax.Array  # int32: how many params were averaged (torch's n_averaged)
    updates: jax.Array  # int32: how many updates were seen (averaged or not)


@dataclasses.dataclass(frozen=True)
class WeightAveraging:
    """A running average of params: an EMA (``decay`` set) or an equal-weight SWA (``decay=None``).

    Build it with :func:`ema` or :func:`swa`. Update ``u`` (1-based, counting every call
    of :meth:`update`) averages its params when ``u > start`` and ``(u - start) % every
    == 0``. Pass it to :func:`~jaxreg.training.fit` as ``average=``, which updates it
    after every optimizer step.

    Args:
      decay: the EMA's weight on the old average, in [0, 1]; None for SWA.
      start: updates that are not averaged before the first one that is, an int >= 0.
      every: average every this many updates from then on, an int >= 1.

    Returns:
      A frozen, hashable object with pure ``init(params)`` and ``update(state, params)``.
    """

    decay: float | None = None
    start: int = 0
    every: int = 1

    def __post_init__(self) -> None:
        fn = "WeightAveraging"
        if self.decay is not None:
            arr = _checks.concrete(self.decay)
            if arr is None or arr.ndim or arr.dtype.kind not in "biuf" or not 0 <= arr <= 1:
                raise ValueError(f"{fn}: decay must be a number in [0, 1] (torch's convention), got {self.decay!r}.")
            object.__setattr__(self, "decay", float(arr))  # frozen: a plain float, hashable
        if isinstance(self.start, (bool, np.bool_)) or not isinstance(self.start, (int, np.integer)) or self.start < 0:
            raise ValueError(f"{fn}: start must be an int >= 0 (updates before averaging starts), got {self.start!r}.")
        object.__setattr__(self, "start", int(self.start))
        object.__setattr__(self, "every", _checks.check_positive_int(fn, "every", self.every))

    def init(self, params: optax.Params) -> AveragingState:
        """The state before any update: ``averaged`` is ``params``, nothing averaged yet.

        Args:
          params: the params (any pytree; NNX ``State`` is unboxed).

        Returns:
          An :class:`AveragingState`.
        """
        zero = jnp.zeros((), jnp.int32)
        return AveragingState(jax.tree.map(jnp.asarray, _tree.unbox(params)), zero, zero)

    def update(self, state: AveragingState, params: optax.Params) -> AveragingState:
        """Records one update: averages ``params`` in if this update is one to average.

        Args:
          state: the current state.
          params: the params after the latest optimizer step (same structure as at init).

        Returns:
          The new state.
        """
        params = _tree.unbox(params)
        updates = state.updates + 1
        averaging = (updates > self.start) & ((updates - self.start) % self.every == 0)
        started = state.count > 0

        def leaf(old: jax.Array, new: jax.Array) -> jax.Array:
            new = jnp.asarray(new)
            if not jnp.issubdtype(new.dtype, jnp.inexact):
                return new
            if self.decay is None:  # the running mean of count + 1 params
                mixed = old + (new - old) / (state.count + 1).astype(new.dtype)
            else:
                mixed = old + (1 - self.decay) * (new - old)
            # The first averaged params are copied; until then the average follows the params.
            return jnp.where(started, jnp.where(averaging, mixed, old), new)

        return AveragingState(
            averaged=jax.tree.map(leaf, state.averaged, params),
            count=state.count + averaging.astype(jnp.int32),
            updates=updates,
        )


def ema(decay: float = 0.999, *, start: int = 0, every: int = 1) -> WeightAveraging:
    """An exponential moving average of the params, as ``AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(decay))``.

    ``averaged = decay * averaged + (1 - decay) * params`` at each averaged update, the
    first averaged params copied (torch's convention; Keras' ``use_ema`` starts from the
    initial weights instead, and ``optax.ema`` averages updates, not params).

    Example::

        averaging = ema(0.99)
        state = averaging.init(params)
        for batch in batches:
            params, opt_state = train_step(params, opt_state, batch)
            state = averaging.update(state, params)
        evaluate(state.averaged)

    Args:
      decay: the weight on the old average, in [0, 1] (``1 - decay`` on the new params).
      start: updates that are not averaged first (a warm-up), an int >= 0.
      every: average every this many updates, an int >= 1.

    Returns:
      A :class:`WeightAveraging`.
    """
    return WeightAveraging(decay, start, every)


def swa(start: int = 0, every: int = 1) -> WeightAveraging:
    """Stochastic weight averaging (Izmailov et al. 2018): the equal-weight mean of the averaged params.

    The running mean of ``AveragedModel``'s default ``avg_fn``. In torch's recipe the
    average is updated once an epoch from epoch ``swa_start`` on; with
    :func:`~jaxreg.training.fit`, which updates after every step, that is
    ``swa(start=swa_start * steps_per_epoch, every=steps_per_epoch)`` with
    ``steps_per_epoch = n_train // batch_size``. torch's ``SWALR`` (a constant or
    annealed learning rate during averaging) is a schedule: ``optax.join_schedules``.

    Args:
      start: updates that are not averaged first, an int >= 0.
      every: average every this many updates, an int >= 1.

    Returns:
      A :class:`WeightAveraging`.
    """
    return WeightAveraging(None, start, every)


def update_batch_stats(model: nnx.Module, inputs: Any, *, batch_size: int | None = None) -> nnx.Module:
    """Recomputes every ``nnx.BatchNorm``'s running statistics from ``inputs``, in place.

    Averaged weights come without matching BatchNorm statistics; this is
    ``torch.optim.swa_utils.update_bn``: the running mean and variance of every
    BatchNorm become the equal-weight average, over the batches of ``inputs``, of the
    batch statistics (torch's cumulative average, ``momentum=None``). The last batch may
    be smaller and counts as much as the others, as in torch. Unlike ``update_bn``,
    dropout and noise layers are off during the pass (the statistics are those of the
    activations the evaluated model sees) and the model's RNG streams do not advance.
    The variance is BatchNorm's own: flax's is the biased batch variance, torch's running
    variance the unbiased one. A model without BatchNorm is returned unchanged.

    Args:
      model: an NNX module; ``model(x)`` must work on a batch of ``inputs``.
      inputs: the training inputs (an array or a pytree of arrays, samples along axis 0).
      batch_size: samples per forward pass (None: all at once), an int >= 1.

    Returns:
      ``model``, its ``nnx.BatchStat`` variables replaced.
    """
    fn = "update_batch_stats"
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{fn}: model must be an nnx.Module, got {type(model).__name__}.")
    inputs = jax.tree.map(jnp.asarray, inputs)
    n = jax.tree.leaves(inputs)[0].shape[0]
    batch_size = n if batch_size is None else _checks.check_positive_int(fn, "batch_size", batch_size)
    work = nnx.clone(model)
    norms = [m for _, m in nnx.iter_modules(work) if isinstance(m, nnx.BatchNorm)]
    if not norms:
        return model
    work.eval()
    for norm in norms:  # normalize with the batch's statistics and store exactly them
        norm.use_running_average, norm.momentum = False, 0.0
    graphdef, state = nnx.split(work)
    total = None
    for start in range(0, n, batch_size):
        chunk = jax.tree.map(operator.itemgetter(slice(start, start + batch_size)), inputs)
        stats = _batch_stats(state, chunk, graphdef)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    batches = math.ceil(n / batch_size)
    stats = nnx.state(model, nnx.BatchStat)
    nnx.replace_by_pure_dict(stats, jax.tree.map(lambda t: t / batches, total))
    nnx.update(model, stats)
    return model


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _batch_stats(state: Any, x: Any, graphdef: Any) -> Any:
    work = nnx.merge(graphdef, state)
    work(x)
    return nnx.to_pure_dict(nnx.state(work, nnx.BatchStat))
