"""The demo's training program: every (configuration, seed) pair a lane of one ``jax.vmap``.

A whole run (initialization, shuffled minibatch epochs, validation, early stopping,
test, one-shot magnitude pruning) is one pure function of a PRNG key and the
optimizer's strengths, so ``vmap`` over them trains all seeds of all configurations at
once, and ``jit`` compiles it once per set of model options (dropout, noise). Unlike
:func:`jaxreg.training.fit`, which steps an ``nnx.Optimizer`` epoch by epoch from
Python, the epochs here are a ``lax.scan``: there is no progress bar, and a lane that
early stopping halts keeps training while its ``EarlyStoppingState`` holds the best
parameters, as the state machine does under ``vmap``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxreg
from jaxreg import pruning
from jaxreg.training import EarlyStopping


class Data(NamedTuple):
    """Train / validation / test arrays (inputs float32 ``(n, features)``, labels int32)."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any
    y_test: Any


class Config(NamedTuple):
    """One configuration: the strengths of the optimizer's regularizers and the model's noise.

    The optimizer is always ``coupled_weight_decay(l2) -> adam -> decoupled_weight_decay
    -> l1_prox`` on the kernels; a configuration sets the strengths it uses and leaves
    the others at zero. The strengths are traced, so configurations that share the
    model's options (dropout, noise) share one compiled program.
    """

    name: str
    l2: float = 0.0  # coupled L2: adds l2 * w to the gradient (PyTorch's Adam weight_decay)
    weight_decay: float = 0.0  # decoupled: shrinks w by lr * weight_decay * w (AdamW)
    l1: float = 0.0  # L1 proximal step of l1 * ||w||_1, after Adam
    dropout_rate: float = 0.0
    input_noise_std: float = 0.0
    hidden_noise_std: float = 0.0

    @property
    def model_options(self) -> tuple[float, float, float]:
        """What the compiled program depends on: dropout rate, input and hidden noise std."""
        return self.dropout_rate, self.input_noise_std, self.hidden_noise_std

    @property
    def strengths(self) -> tuple[float, float, float]:
        """What the lanes of one program differ in: l2, weight_decay, l1."""
        return self.l2, self.weight_decay, self.l1


def optimizer(lr: float, l2: Any, weight_decay: Any, l1: Any) -> optax.GradientTransformation:
    """Adam with coupled L2, decoupled weight decay and an L1 prox on the kernels (strengths may be traced).

    Args:
      lr: Adam's learning rate.
      l2: coupled L2 strength.
      weight_decay: decoupled weight decay rate.
      l1: L1 strength.

    Returns:
      The optax chain.
    """
    kernels = jaxreg.masks.weights_only
    return optax.chain(
        jaxreg.coupled_weight_decay(l2, mask=kernels),
        optax.adam(lr),
        jaxreg.decoupled_weight_decay(weight_decay, learning_rate=lr, mask=kernels),
        jaxreg.l1_prox(l1, learning_rate=lr, mask=kernels),
    )


class Lanes(NamedTuple):
    """What the program returns, each array with a leading axis of one entry per seed."""

    train_loss: jax.Array  # (seeds, epochs): mean minibatch loss, training mode
    val_loss: jax.Array  # (seeds, epochs)
    test_loss: jax.Array  # (seeds,) of the final parameters
    test_accuracy: jax.Array  # (seeds,)
    sparsity: jax.Array  # (seeds,) fraction of kernel weights exactly zero
    pruned_accuracy: jax.Array  # (seeds, levels): test accuracy after one-shot magnitude pruning
    kernels: Any  # the final kernel weights, a list of (seeds, ...) arrays
    stop_epoch: jax.Array  # (seeds,) 1-based epoch where early stopping stopped (epochs if it did not)
    best_epoch: jax.Array  # (seeds,) 1-based epoch of the best validation loss
    best_test_loss: jax.Array  # the same five for the parameters early stopping kept
    best_test_accuracy: jax.Array
    best_sparsity: jax.Array
    best_pruned_accuracy: jax.Array
    best_kernels: Any


def _logits(graphdef: nnx.GraphDef, params: Any, rest: Any, x: jax.Array, train: bool) -> tuple[jax.Array, Any]:
    model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables at this trace level
    if not train:
        model.eval()
    logits = model(x)
    return logits, nnx.split(model, nnx.Param, ...)[2]


def _evaluate(
    graphdef: nnx.GraphDef, params: Any, rest: Any, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, jax.Array]:
    logits, _ = _logits(graphdef, params, rest, x, train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


def _kernel_leaves(params: Any) -> list[jax.Array]:
    keep = jax.tree.leaves(jaxreg.masks.weights_only(params))
    return [leaf for leaf, k in zip(jax.tree.leaves(params), keep) if k]


def _evaluate_all(graphdef, params, rest, data: Data, levels: Sequence[float]) -> tuple:
    """Test loss, test accuracy, exact zeros, accuracy after one-shot pruning at each level, kernels."""
    test_loss, test_acc = _evaluate(graphdef, params, rest, data.x_test, data.y_test)
    kernels = _kernel_leaves(params)
    zeros = sum(jnp.sum(k == 0) for k in kernels) / sum(k.size for k in kernels)

    def pruned_accuracy(level: jax.Array) -> jax.Array:
        # Each kernel pruned on its own (torch.nn.utils.prune.l1_unstructured on every layer).
        keep = pruning.magnitude_mask(params, level, where=jaxreg.masks.weights_only)
        return _evaluate(graphdef, pruning.apply_mask(params, keep), rest, data.x_test, data.y_test)[1]

    # The sparsity is traced: one compiled mask search serves every level.
    pruned = jax.vmap(pruned_accuracy)(jnp.asarray(levels, jnp.float32))
    return test_loss, test_acc, zeros.astype(jnp.float32), pruned, kernels


@functools.lru_cache(maxsize=16)
def program(
    model_options: tuple[float, float, float],
    hidden: tuple[int, ...],
    lr: float,
    epochs: int,
    batch_size: int,
    patience: int,
    levels: tuple[float, ...],
):
    """The compiled program ``(strengths, keys, data) -> Lanes``, vmapped over lanes.

    Lane ``i`` trains with ``strengths[i]`` (l2, weight decay, l1) from ``keys[i]``.
    Cached, so that a second run with the same sizes in one process reuses the compile.

    Args:
      model_options: dropout rate, input noise std, hidden noise std.
      lr: Adam's learning rate.
      hidden: hidden layer widths of the :class:`jaxreg.nn.MLP`.
      epochs: epochs every lane trains.
      batch_size: minibatch size (the last incomplete batch of an epoch is dropped).
      patience: early stopping's patience in epochs, on the validation loss.
      levels: sparsities of the one-shot magnitude pruning.

    Returns:
      A jitted function of a ``(lanes, 3)`` float32 array of strengths, a ``(lanes,)``
      array of PRNG keys and a :class:`Data`.
    """
    stopper = EarlyStopping(patience=patience)
    dropout_rate, input_noise_std, hidden_noise_std = model_options

    def lane(strengths: jax.Array, key: jax.Array, data: Data) -> Lanes:
        tx = optimizer(lr, *strengths)
        init_key, shuffle_key = jax.random.split(key)
        model = jaxreg.nn.MLP(
            data.x_train.shape[1],
            hidden,
            10,
            dropout_rate=dropout_rate,
            input_noise_std=input_noise_std,
            hidden_noise_std=hidden_noise_std,
            rngs=nnx.Rngs(init_key),
        )
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        n = data.x_train.shape[0]
        steps = n // batch_size

        def loss_fn(params, rest, x, y):
            logits, rest = _logits(graphdef, params, rest, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), rest

        def step(carry, batch):
            params, rest, opt_state = carry
            (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, *batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), rest, opt_state), loss

        def epoch(carry, epoch_key):
            params, rest, opt_state, stop_state = carry
            order = jax.random.permutation(epoch_key, n)[: steps * batch_size].reshape(steps, batch_size)
            (params, rest, opt_state), losses = jax.lax.scan(
                step, (params, rest, opt_state), (data.x_train[order], data.y_train[order])
            )
            val_loss, _ = _evaluate(graphdef, params, rest, data.x_val, data.y_val)
            stop_state = stopper.update(stop_state, val_loss, params)
            return (params, rest, opt_state, stop_state), (losses.mean(), val_loss)

        carry = (params, rest, tx.init(params), stopper.init(params))
        (params, rest, _, stop_state), (train_loss, val_loss) = jax.lax.scan(
            epoch, carry, jax.random.split(shuffle_key, epochs)
        )
        final = _evaluate_all(graphdef, params, rest, data, levels)
        best = _evaluate_all(graphdef, stop_state.best_params, rest, data, levels)
        return Lanes(
            train_loss,
            val_loss,
            *final,
            jnp.where(stop_state.should_stop, stop_state.evaluations, epochs),
            stop_state.best_step + 1,
            *best,
        )

    return jax.jit(jax.vmap(lane, in_axes=(0, 0, None)))


def train(
    configs: Sequence[Config], data: Data, keys: jax.Array, **sizes: Any
) -> tuple[list[Lanes], list[tuple[list[str], float]]]:
    """Trains every configuration once per key, one program per set of model options.

    Args:
      configs: the configurations.
      data: the data, NumPy or JAX arrays.
      keys: a ``(seeds,)`` array of PRNG keys; every configuration uses the same keys.
      **sizes: the keyword arguments of :func:`program` after ``model_options``.

    Returns:
      One :class:`Lanes` of NumPy arrays per configuration, in order, and per program
      the names of its configurations and its seconds (compilation included).
    """
    data = Data(*map(jnp.asarray, data))
    seeds = len(keys)
    results: dict[str, Lanes] = {}
    timings = []
    for options in dict.fromkeys(c.model_options for c in configs):
        group = [c for c in configs if c.model_options == options]
        strengths = jnp.repeat(jnp.asarray([c.strengths for c in group], jnp.float32), seeds, axis=0)
        start = time.perf_counter()
        # optax.adam mixes weakly typed Python floats into its moments: not strict-promotion clean.
        with jax.numpy_dtype_promotion("standard"):
            lanes = jax.tree.map(np.asarray, program(options, **sizes)(strengths, jnp.tile(keys, len(group)), data))
        timings.append(([c.name for c in group], time.perf_counter() - start))
        for i, c in enumerate(group):
            results[c.name] = jax.tree.map(lambda x, i=i: x[i * seeds : (i + 1) * seeds], lanes)
    return [results[c.name] for c in configs], timings
