"""``fit``: a small, honest training loop for Flax NNX models.

What it does, and nothing more: each epoch shuffles the training set with a key
derived from ``(key, epoch)``, runs every full minibatch through the user's loss and
``nnx.Optimizer`` (the last partial batch is dropped), evaluates the validation set in
evaluation mode, feeds the monitored score to an optional
:class:`~jaxreg.training.EarlyStopping`, writes an orbax checkpoint every
``checkpoint_every`` epochs, and reports epoch, losses and time left on a tqdm bar.
With ``average=`` it keeps an average of the weights (an EMA or SWA), validates it and
returns it.

Why one compiled program per epoch: the model and optimizer are split once into a
graph definition and a pytree of arrays (``nnx.split``), and a whole epoch is one
``jax.jit`` of a ``lax.scan`` over the minibatches that merges them back inside the
trace. ``nnx.jit`` walks the object graph in Python on every call; the functional split
pays that once per trace, and the scan removes the per-step dispatch too. On a
64-128-128-10 MLP (dropout, Adam) with batch 64, in three runs on a shared 2-core CPU
machine, a step took 2.2-25 ms with ``nnx.jit``, 0.5-4.0 ms with a jitted split/merge
step and 0.4-0.7 ms inside the scan: the Python-side costs grow with the machine's
load, and the scan has none per step.

Resuming is exact: everything an epoch reads is in the checkpoint (parameters,
optimizer state, the model's ``nnx.Rngs`` counters, the early-stopping and averaging
states, the epoch and the history), and the shuffle and augmentation keys are ``fold_in(key, epoch)``, so
a run interrupted after epoch ``k`` and resumed from its checkpoint computes the same
epochs ``k + 1, ...`` bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jaxreg import _checks
from jaxreg.nn.optimizer import update_model
from jaxreg.training import _checkpoint
from jaxreg.training._checkpoint import is_key
from jaxreg.training.averaging import AveragingState, WeightAveraging
from jaxreg.training.early_stopping import EarlyStopping, EarlyStoppingState

__all__ = ["History", "fit"]

_MONITORS = ("val_loss", "val_metric", "train_loss")
_FIELDS = ("train_loss", "val_loss", "val_metric", "epoch_time")
# What restore_best brings back: all of the model's state (parameters, BatchNorm
# statistics, ...) but its RNG streams, as Keras' restore_best_weights restores every
# weight but not the seed generators: rewinding them would replay the same dropout masks.
_RESTORED = nnx.Not(nnx.RngState)


class History(NamedTuple):
    """What :func:`fit` returns: one entry per epoch run (restored epochs included)."""

    train_loss: np.ndarray  # mean minibatch loss of the epoch, in training mode
    val_loss: np.ndarray  # loss_fn on the validation set in evaluation mode (NaN without val_data)
    val_metric: np.ndarray  # metric_fn on the validation set (NaN without metric_fn)
    epoch_time: np.ndarray  # seconds per epoch (the first includes compilation)
    stopped_early: bool  # True if early stopping (or the callback) ended the run
    best_epoch: int | None  # 1-based epoch with the best monitored score (None without early stopping)
    resumed_from: int  # epochs restored from a checkpoint (0 for a fresh run)

    @property
    def epochs(self) -> int:
        """Number of epochs in the history."""
        return len(self.train_loss)


def _check_data(fn: str, name: str, data: Any) -> tuple[Any, Any, int]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{fn}: {name} must be a pair (inputs, targets) of arrays, got {type(data).__name__}.")
    x, y = jax.tree.map(jnp.asarray, tuple(data))
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves((x, y))}
    if len(sizes) != 1 or None in sizes:
        shapes = [leaf.shape for leaf in jax.tree.leaves((x, y))]
        raise ValueError(f"{fn}: {name} arrays must share their first (sample) dimension, got shapes {shapes}.")
    n = sizes.pop()
    if n == 0:
        raise ValueError(f"{fn}: {name} holds no samples.")
    return x, y, n


def _take(tree: Any, idx: jax.Array) -> Any:
    return jax.tree.map(lambda a: a[idx], tree)


def _slice(tree: Any, start: int, stop: int) -> Any:
    return jax.tree.map(lambda a: a[start:stop], tree)


@functools.partial(jax.jit, static_argnames=("graphdef", "loss_fn", "wrt", "augment", "mix", "average", "batch_size"))
def _train_epoch(
    state: Any,
    averaging: AveragingState | None,
    x: Any,
    y: Any,
    epoch_key: jax.Array,
    *,
    graphdef: Any,
    loss_fn: Callable[..., jax.Array],
    wrt: Any,
    augment: Callable[[jax.Array, Any], Any] | None,
    mix: Callable[[jax.Array, Any, Any], tuple[Any, Any]] | None,
    average: WeightAveraging | None,
    batch_size: int,
) -> tuple[Any, AveragingState | None, jax.Array]:
    """One epoch: a keyed shuffle, then one optimizer step (and ``average`` update) per full minibatch, as one scan."""
    n = jax.tree.leaves(x)[0].shape[0]
    steps = n // batch_size
    shuffle_key, augment_key = jax.random.split(epoch_key)
    order = jax.random.permutation(shuffle_key, n)[: steps * batch_size].reshape(steps, batch_size)

    def step(carry: tuple[Any, Any], batch: tuple[jax.Array, jax.Array]) -> tuple[tuple[Any, Any], jax.Array]:
        state, averaging = carry
        idx, step_key = batch
        model, optimizer = nnx.merge(graphdef, state)
        model.train()
        xb, yb = _take(x, idx), _take(y, idx)
        if augment is not None:
            xb = augment(step_key, xb)
        if mix is not None:  # a key of its own, so adding mix leaves augment's draws as they were
            xb, yb = mix(jax.random.fold_in(step_key, 1), xb, yb)
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model, xb, yb)
        loss = jnp.asarray(loss, jnp.float32)
        # value= reaches the transforms that read the loss (optax.contrib.reduce_on_plateau);
        # one pass when optimizer.tx is a jaxreg.chain.
        update_model(optimizer, model, grads, value=loss)
        if average is not None:
            averaging = average.update(averaging, _trained(model, wrt))
        return (nnx.split((model, optimizer))[1], averaging), loss

    carry = (state, averaging)
    (state, averaging), losses = jax.lax.scan(step, carry, (order, jax.random.split(augment_key, steps)))
    return state, averaging, jnp.mean(losses)


def _trained(model: nnx.Module, wrt: Any) -> Any:
    """The variables the optimizer trains (its ``wrt``), as a pure dict: what ``average`` averages."""
    return nnx.to_pure_dict(nnx.state(model, wrt))


@functools.partial(jax.jit, static_argnames=("graphdef", "loss_fn", "metric_fn"))
def _evaluate(
    state: Any,
    x: Any,
    y: Any,
    *,
    graphdef: Any,
    loss_fn: Callable[..., jax.Array],
    metric_fn: Callable[..., jax.Array] | None,
) -> tuple[jax.Array, jax.Array]:
    """Mean loss and metric of one batch in evaluation mode (dropout and noise off)."""
    model = nnx.merge(graphdef, state)
    model.eval()
    metric = jnp.nan if metric_fn is None else metric_fn(model, x, y)
    return jnp.asarray(loss_fn(model, x, y), jnp.float32), jnp.asarray(metric, jnp.float32)


def _mean_over_chunks(
    evaluate: Callable[..., tuple[jax.Array, jax.Array]], data: tuple[Any, Any, int], chunk: int | None
) -> tuple[float, float]:
    x, y, n = data
    chunk = n if chunk is None else min(chunk, n)
    totals = np.zeros(2)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        loss, metric = evaluate(_slice(x, start, stop), _slice(y, start, stop))
        # loss_fn and metric_fn are batch means: weighting by batch size gives the set's mean.
        totals += (stop - start) * np.array([float(loss), float(metric)])
    return float(totals[0] / n), float(totals[1] / n)


def fit(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    loss_fn: Callable[[nnx.Module, Any, Any], jax.Array],
    train_data: tuple[Any, Any],
    val_data: tuple[Any, Any] | None = None,
    *,
    key: jax.Array,
    epochs: int,
    batch_size: int,
    metric_fn: Callable[[nnx.Module, Any, Any], jax.Array] | None = None,
    early_stopping: EarlyStopping | None = None,
    monitor: str = "val_loss",
    restore_best: bool = True,
    augment: Callable[[jax.Array, Any], Any] | None = None,
    mix: Callable[[jax.Array, Any, Any], tuple[Any, Any]] | None = None,
    average: WeightAveraging | None = None,
    eval_batch_size: int | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    max_checkpoints: int = 2,
    on_epoch_end: Callable[[int, dict[str, float]], bool | None] | None = None,
    progress: bool | str = True,
) -> History:
    """Trains ``model`` with ``optimizer`` on minibatches, validating every epoch.

    Each epoch: shuffle the ``n`` training samples with ``fold_in(key, epoch)``, take the
    ``n // batch_size`` full minibatches (the remainder is dropped, a different one each
    epoch), apply ``augment`` to each batch's inputs and ``mix`` to its inputs and
    labels, and take one optimizer step per
    batch on ``loss_fn`` in training mode (``model.train()``: dropout and noise on).
    Then evaluate ``loss_fn`` and ``metric_fn`` on ``val_data`` in evaluation mode
    (``model.eval()``), update ``early_stopping`` with the ``monitor`` score, call
    ``on_epoch_end``, save a checkpoint. The model and optimizer passed in are updated in
    place after every epoch, so an interrupted call leaves them at the last finished
    epoch.

    With ``checkpoint_dir`` the model and optimizer state (with the model's RNG
    counters), the early-stopping and averaging states, the epoch and the history are written every
    ``checkpoint_every`` epochs and after the last one; a later call with the same
    directory and arguments restores the newest checkpoint and continues from there,
    reaching the same parameters as a run that was never interrupted. Give a larger
    ``epochs`` to train a finished run further. A checkpoint written with other
    arguments (``batch_size``, ``key``, training data, model, optimizer,
    ``early_stopping`` or ``average``) is refused with an error naming which; a checkpoint that cannot
    be read is deleted with a warning naming it, and the newest readable one is resumed.

    Args:
      model: an NNX module; ``loss_fn(model, x, y)`` must work on a batch.
      optimizer: ``nnx.Optimizer(model, tx, wrt=...)`` with any optax/jaxreg chain
        (transforms that read ``params`` included); gradients are taken with respect to
        its ``wrt`` filter. ``tx.update`` gets the batch's loss as ``value=``, as
        ``optax.contrib.reduce_on_plateau`` and other ``GradientTransformationExtraArgs``
        expect.
      loss_fn: ``(model, x, y) -> scalar`` mean loss of a batch (a jaxreg penalty may
        be part of it). It, ``metric_fn``, ``augment`` and ``mix`` are static arguments of the
        compiled epoch (hashable; a later fit with the same ones, the same model
        architecture and the same ``tx`` object reuses the compilation).
      train_data: ``(x, y)``, arrays (or pytrees of arrays) with the samples along the
        first axis.
      val_data: ``(x, y)`` for validation, or None.
      key: PRNG key for the shuffles, ``augment`` and ``mix``; the model's own ``nnx.Rngs``
        drive dropout and noise.
      epochs: total number of epochs (counting those restored from a checkpoint), >= 1.
      batch_size: samples per step, ``1 <= batch_size <= n``.
      metric_fn: ``(model, x, y) -> scalar`` batch mean (e.g. accuracy) reported on
        the validation set, or None.
      early_stopping: an :class:`EarlyStopping` fed the ``monitor`` score each epoch,
        or None. Set its ``mode`` to match the score (``"max"`` for an accuracy).
      monitor: the score early stopping watches: ``"val_loss"``, ``"val_metric"`` or
        ``"train_loss"``.
      restore_best: with early stopping, load the best epoch's model state into the
        model at the end: its parameters and every other variable (BatchNorm's
        statistics), as Keras' ``restore_best_weights``; the RNG streams and the
        optimizer keep their last state.
      augment: ``(key, x_batch) -> x_batch`` applied to every training batch inside the
        compiled step (e.g. :class:`~jaxreg.training.ImageAugmentation`), or None.
      mix: ``(key, x_batch, y_batch) -> (x_batch, y_batch)`` applied to every training
        batch after ``augment``, for the transforms that change the labels too, e.g.
        ``functools.partial(jaxreg.training.mixup, alpha=0.2, num_classes=10)`` or
        :func:`~jaxreg.training.cutmix`; ``loss_fn`` then gets soft labels (use
        ``optax.softmax_cross_entropy``). Validation sees the data unmixed. Or None.
      average: a :func:`~jaxreg.training.ema` or :func:`~jaxreg.training.swa` of the
        trained variables (the optimizer's ``wrt``), updated after every optimizer step
        inside the compiled epoch, or None. Training is unchanged (the optimizer steps
        the raw weights and ``train_loss`` is theirs); validation, early stopping and
        ``restore_best`` see the averaged weights beside the trained model's other
        variables (BatchNorm statistics, as torch's ``AveragedModel`` without
        ``use_buffers``); at the end the model holds the averaged weights (the best
        epoch's with ``restore_best``) and the optimizer its last state. For a model
        with BatchNorm, call :func:`~jaxreg.training.update_batch_stats` afterwards.
      eval_batch_size: evaluate the validation set in chunks of this size (None: all at
        once).
      checkpoint_dir: directory for orbax checkpoints (created if missing), or None.
        Needs ``pip install 'jaxreg[train]'``. The call then reads the training data
        once more, for the SHA-256 digest that identifies it in the checkpoint.
      checkpoint_every: save every this many epochs (and after the last one), >= 1.
      max_checkpoints: how many of the newest checkpoints to keep, >= 1.
      on_epoch_end: ``(epoch, record) -> bool | None`` called after each epoch with the
        1-based epoch and its ``train_loss``, ``val_loss``, ``val_metric`` and
        ``epoch_time``, before the epoch's checkpoint is written; returning True stops
        training, and the checkpoint records the stop (a rerun of the same call trains
        no further). An exception it raises ends the call after the checkpoint is
        written.
      progress: show a tqdm bar (True), one labelled with this string, or none (False).

    Returns:
      A :class:`History` with per-epoch ``train_loss``, ``val_loss``, ``val_metric``,
      ``epoch_time``, and ``stopped_early``, ``best_epoch``, ``resumed_from``.
    """
    fn = "fit"
    args = _check_arguments(
        fn,
        model,
        optimizer,
        train_data,
        val_data,
        key=key,
        epochs=epochs,
        batch_size=batch_size,
        metric_fn=metric_fn,
        early_stopping=early_stopping,
        monitor=monitor,
        average=average,
        mix=mix,
        eval_batch_size=eval_batch_size,
        checkpoint_every=checkpoint_every,
        max_checkpoints=max_checkpoints,
    )
    graphdef, state = nnx.split((model, optimizer))
    run = _Run(
        model=model,
        optimizer=optimizer,
        # Static arguments key the compilation cache: a second fit of the same architecture,
        # optimizer and functions (a resumed run, another seed) reuses the compiled epoch.
        train_epoch=functools.partial(
            _train_epoch,
            graphdef=graphdef,
            loss_fn=loss_fn,
            wrt=optimizer.wrt,
            augment=augment,
            mix=mix,
            average=average,
            batch_size=args.batch_size,
        ),
        loss_fn=loss_fn,
        metric_fn=metric_fn,
        train=args.train,
        val=args.val,
        key=key,
        eval_batch_size=args.eval_batch_size,
        early_stopping=early_stopping,
        monitor=monitor,
    )
    carry = _Carry(
        state,
        stopping=None if early_stopping is None else early_stopping.init(_restorable(model)),
        averaging=None if average is None else average.init(_trained(model, optimizer.wrt)),
    )
    records: dict[str, list[float]] = {name: [] for name in _FIELDS}
    start, stopped = 0, False

    checkpoints = None
    if checkpoint_dir is not None:
        # What a resumed run must share with the run that wrote the checkpoint: a checkpoint
        # of other data of the same size, or of another optimizer whose state orbax could
        # still fill, would otherwise resume silently.
        fingerprint = {
            "batch_size": args.batch_size,
            "n_train": args.train[2],
            "key": args.key_data.tolist(),
            "train_data": _checkpoint.digest_of_values(args.train[:2]),
            "state": _checkpoint.digest_of_structure(carry.payload()),
            "average": None if average is None else dataclasses.asdict(average),
        }
        checkpoints = _checkpoint.Checkpoints(
            fn,
            checkpoint_dir,
            every=args.checkpoint_every,
            max_to_keep=args.max_checkpoints,
            epochs=args.epochs,
            fingerprint=fingerprint,
        )

    label = progress if isinstance(progress, str) else None
    with contextlib.ExitStack() as stack:  # on the way out: close the bar, then finish the writes
        if checkpoints is not None:
            stack.callback(checkpoints.close)
        restored = None if checkpoints is None else checkpoints.restore(carry.payload())
        if restored is not None:
            meta, arrays = restored
            carry = carry.restored(arrays)
            records = {name: list(meta["history"][name]) for name in _FIELDS}
            start, stopped = int(meta["epoch"]), bool(meta["stopped"])
            nnx.update((model, optimizer), carry.state)

        bar = stack.enter_context(_progress_bar(label, args.epochs, start, disable=not progress))
        for epoch in range(start, args.epochs):
            if stopped:
                break
            carry, record = run.epoch(epoch, carry)
            stopped = carry.stopping is not None and bool(carry.stopping.should_stop)
            for name in _FIELDS:
                records[name].append(record[name])
            bar.set_postfix(_postfix(record), refresh=False)
            bar.update(1)
            try:
                if on_epoch_end is not None and on_epoch_end(epoch + 1, dict(record)):
                    stopped = True
            finally:
                # After the callback, so that the checkpoint records a stop it asks for; in
                # a finally, so that an exception it raises leaves the epoch checkpointed.
                if checkpoints is not None and checkpoints.due(epoch + 1, stopped):
                    # A copy of the history: orbax writes the JSON asynchronously, while the
                    # next epoch appends to the live lists.
                    history = {name: list(values) for name, values in records.items()}
                    meta = {"epoch": epoch + 1, "stopped": stopped, "history": history}
                    checkpoints.save(epoch + 1, carry.payload(), meta)

    if carry.averaging is not None:
        nnx.update(model, nnx.state(run.evaluated(carry.averaging), optimizer.wrt))
    best_epoch = None
    if carry.stopping is not None and int(carry.stopping.best_step) >= 0:
        best_epoch = int(carry.stopping.best_step) + 1
        if restore_best:
            best = nnx.state(model, _RESTORED)
            nnx.replace_by_pure_dict(best, carry.stopping.best_params)  # in place
            nnx.update(model, best)
    return History(
        *(np.asarray(records[name], np.float64) for name in _FIELDS),
        stopped_early=stopped,
        best_epoch=best_epoch,
        resumed_from=start,
    )


class _Arguments(NamedTuple):
    """:func:`fit`'s arguments, checked and normalized."""

    epochs: int
    batch_size: int
    checkpoint_every: int
    max_checkpoints: int
    eval_batch_size: int | None
    train: tuple[Any, Any, int]  # (x, y, n)
    val: tuple[Any, Any, int] | None
    key_data: np.ndarray  # the key's raw uint32 data (the checkpoint's fingerprint)


def _check_arguments(
    fn: str,
    model: Any,
    optimizer: Any,
    train_data: Any,
    val_data: Any,
    *,
    key: Any,
    epochs: Any,
    batch_size: Any,
    metric_fn: Any,
    early_stopping: Any,
    monitor: Any,
    average: Any,
    mix: Any,
    eval_batch_size: Any,
    checkpoint_every: Any,
    max_checkpoints: Any,
) -> _Arguments:
    """Raises a TypeError or ValueError naming the first bad argument; returns them normalized."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{fn}: model must be an nnx.Module, got {type(model).__name__}.")
    if not isinstance(optimizer, nnx.Optimizer):
        raise TypeError(f"{fn}: optimizer must be an nnx.Optimizer, got {type(optimizer).__name__}.")
    epochs = _checks.check_positive_int(fn, "epochs", epochs)
    batch_size = _checks.check_positive_int(fn, "batch_size", batch_size)
    checkpoint_every = _checks.check_positive_int(fn, "checkpoint_every", checkpoint_every)
    max_checkpoints = _checks.check_positive_int(fn, "max_checkpoints", max_checkpoints)
    if eval_batch_size is not None:
        eval_batch_size = _checks.check_positive_int(fn, "eval_batch_size", eval_batch_size)
    train = _check_data(fn, "train_data", train_data)
    val = None if val_data is None else _check_data(fn, "val_data", val_data)
    if batch_size > train[2]:
        raise ValueError(f"{fn}: batch_size must be at most the {train[2]} training samples, got {batch_size}.")
    if monitor not in _MONITORS:
        raise ValueError(f"{fn}: monitor must be one of {', '.join(map(repr, _MONITORS))}, got {monitor!r}.")
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"{fn}: early_stopping must be a jaxreg.training.EarlyStopping, got {early_stopping!r}.")
    if average is not None and not isinstance(average, WeightAveraging):
        raise TypeError(f"{fn}: average must be a jaxreg.training.ema(...) or swa(...), got {average!r}.")
    if mix is not None and not callable(mix):
        raise TypeError(
            f"{fn}: mix must be a callable (key, x_batch, y_batch) -> (x_batch, y_batch), such as "
            f"functools.partial(jaxreg.training.mixup, alpha=0.2, num_classes=10); got {mix!r}."
        )
    if early_stopping is not None and monitor != "train_loss" and val is None:
        raise ValueError(f"{fn}: monitor={monitor!r} needs val_data; give val_data or monitor='train_loss'.")
    if early_stopping is not None and monitor == "val_metric" and metric_fn is None:
        raise ValueError(f"{fn}: monitor='val_metric' needs metric_fn.")
    if not (is_key(key) or (getattr(key, "dtype", None) == np.uint32 and np.shape(key)[-1:] == (2,))):
        raise TypeError(f"{fn}: key must be a PRNG key such as jax.random.key(0), got {key!r}.")
    key_data = np.asarray(jax.random.key_data(key) if is_key(key) else key)
    return _Arguments(epochs, batch_size, checkpoint_every, max_checkpoints, eval_batch_size, train, val, key_data)


def _restorable(model: nnx.Module) -> Any:
    return nnx.to_pure_dict(nnx.state(model, _RESTORED))


class _Carry(NamedTuple):
    """What changes from epoch to epoch (and a checkpoint holds)."""

    state: Any  # nnx.split((model, optimizer))[1]
    stopping: EarlyStoppingState | None
    averaging: AveragingState | None

    def payload(self) -> dict[str, Any]:
        """The arrays of a checkpoint, as pure dicts."""
        tree = {"model_and_optimizer": nnx.to_pure_dict(self.state)}
        for name, value in (("early_stopping", self.stopping), ("average", self.averaging)):
            if value is not None:
                tree[name] = value._asdict()
        return tree

    def restored(self, arrays: dict[str, Any]) -> _Carry:
        """This carry with the checkpoint's ``arrays`` (a :meth:`payload`) in it."""
        nnx.replace_by_pure_dict(self.state, arrays["model_and_optimizer"])  # in place
        stopping = None if self.stopping is None else EarlyStoppingState(**arrays["early_stopping"])
        averaging = None if self.averaging is None else AveragingState(**arrays["average"])
        return _Carry(self.state, stopping, averaging)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What stays fixed over the epochs of one :func:`fit` call."""

    model: nnx.Module
    optimizer: nnx.Optimizer
    train_epoch: Callable[..., tuple[Any, Any, jax.Array]]  # _train_epoch with its static arguments bound
    loss_fn: Callable[..., jax.Array]
    metric_fn: Callable[..., jax.Array] | None
    train: tuple[Any, Any, int]
    val: tuple[Any, Any, int] | None
    key: jax.Array
    eval_batch_size: int | None
    early_stopping: EarlyStopping | None
    monitor: str

    def epoch(self, epoch: int, carry: _Carry) -> tuple[_Carry, dict[str, float]]:
        """Trains the 0-based ``epoch``, writes it into the model and optimizer, validates.

        Returns the new carry and the epoch's record.
        """
        t0 = time.perf_counter()
        key = jax.random.fold_in(self.key, epoch)
        state, averaging, train_loss = self.train_epoch(carry.state, carry.averaging, *self.train[:2], key)
        nnx.update((self.model, self.optimizer), state)
        evaluated = self.evaluated(averaging)
        val_loss, val_metric = math.nan, math.nan
        if self.val is not None:
            val_loss, val_metric = _mean_over_chunks(
                functools.partial(self.evaluate, evaluated), self.val, self.eval_batch_size
            )
        record = {"train_loss": float(train_loss), "val_loss": val_loss, "val_metric": val_metric}
        stopping = carry.stopping
        if stopping is not None:
            score = jnp.float32(record[self.monitor])
            stopping = self.early_stopping.update(stopping, score, _restorable(evaluated))
        record["epoch_time"] = time.perf_counter() - t0
        return _Carry(state, stopping, averaging), record

    def evaluated(self, averaging: AveragingState | None) -> nnx.Module:
        """The model that is validated: the trained one, or a copy of it holding the averaged weights."""
        if averaging is None:
            return self.model
        graphdef, trained, rest = nnx.split(self.model, self.optimizer.wrt, ...)
        nnx.replace_by_pure_dict(trained, averaging.averaged)  # in the copy split made
        return nnx.merge(graphdef, trained, rest)

    def evaluate(self, model: nnx.Module, x: Any, y: Any) -> tuple[jax.Array, jax.Array]:
        """Mean loss and metric of ``model`` on one batch, in evaluation mode."""
        # The model alone: its graph does not hold the optimizer, so runs that differ only
        # in their optimizer share this compilation.
        graphdef, state = nnx.split(model)
        return _evaluate(state, x, y, graphdef=graphdef, loss_fn=self.loss_fn, metric_fn=self.metric_fn)


def _postfix(record: dict[str, float]) -> dict[str, str]:
    return {name: f"{value:.4g}" for name, value in record.items() if name != "epoch_time" and not math.isnan(value)}


def _progress_bar(label: str | None, epochs: int, start: int, disable: bool) -> tqdm:
    return tqdm(total=epochs, initial=start, desc=label or "fit", unit="epoch", disable=disable, dynamic_ncols=True)
