"""Small Flax NNX models for the regularization experiments of the source articles.

Biases start at zero (the fifth article's advice for convolutions; the NNX default for
``Linear`` and ``Conv``, set explicitly here so that it is visible). Dropout is
``nnx.Dropout`` (inverted: kept units are scaled by ``1 / (1 - rate)``) and noise is
:class:`~jaxreg.nn.GaussianNoise`; ``model.train()`` / ``model.eval()`` switch both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxreg import _checks
from jaxreg.nn.layers import GaussianNoise, rngs_for

Activation = Callable[[jax.Array], jax.Array]
ZEROS = nnx.initializers.zeros_init()


def _check_rate(fn: str, rate: float) -> float:
    if not 0 <= rate < 1:
        raise ValueError(f"{fn}: dropout_rate must lie in [0, 1), got {rate!r}.")
    return rate


def _check_std(fn: str, name: str, std: float) -> float:
    if not std >= 0:
        raise ValueError(f"{fn}: {name} must be a non-negative number, got {std!r}.")
    return std


def _average_pool_2x2(x: jax.Array) -> jax.Array:
    # nnx.avg_pool divides by an int window size, which strict dtype promotion refuses. The
    # start value is a NumPy constant: a jnp array would be traced under jit, and
    # reduce_window has no reverse-mode rule for a traced start value.
    summed = jax.lax.reduce_window(x, np.zeros([], x.dtype), jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return summed / jnp.asarray(4, x.dtype)


class MLP(nnx.Module):
    """A multilayer perceptron with dropout and Gaussian noise on inputs and hidden units.

    ``x -> noise(input_noise_std) -> [Linear -> activation -> noise(hidden_noise_std)
    -> Dropout(dropout_rate)] * len(hidden) -> Linear``. With
    ``record_activations=True`` each hidden activation is sown as an ``nnx.Intermediate``
    named ``"activations"``; collect them with
    ``out, acts = nnx.capture(model, nnx.Intermediate)(x)`` and penalize them with
    :func:`jaxreg.penalties.activity_l1` (sparse representations), without changing the
    call signature.

    Args:
      in_features: input width.
      hidden: widths of the hidden layers (positive ints; may be empty).
      out_features: output width.
      activation: the hidden activation, ``nnx.relu`` by default.
      dropout_rate: dropout after every hidden layer, in [0, 1).
      input_noise_std: std of the Gaussian noise added to the inputs in training.
      hidden_noise_std: std of the Gaussian noise added to hidden units in training.
      record_activations: sow the hidden activations for activity regularization.
      rngs: ``nnx.Rngs`` with ``params``, and ``dropout`` / ``noise`` (or ``default``)
        where the dropout rate / a noise std is above zero.

    Returns:
      The module; calling it maps ``(batch, in_features)`` to ``(batch, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        activation: Activation = nnx.relu,
        dropout_rate: float = 0.0,
        input_noise_std: float = 0.0,
        hidden_noise_std: float = 0.0,
        record_activations: bool = False,
        rngs: nnx.Rngs,
    ):
        fn = "MLP"
        self.in_features = _checks.check_positive_int(fn, "in_features", in_features)
        _checks.check_positive_int(fn, "out_features", out_features)
        widths = [_checks.check_positive_int(fn, f"hidden[{i}]", h) for i, h in enumerate(hidden)]
        _check_rate(fn, dropout_rate)
        self.activation = activation
        self.record_activations = record_activations
        self.input_noise = GaussianNoise(_check_std(fn, "input_noise_std", input_noise_std), rngs=rngs)
        sizes = [in_features, *widths]
        self.layers = nnx.List([nnx.Linear(a, b, bias_init=ZEROS, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.hidden_noise = GaussianNoise(_check_std(fn, "hidden_noise_std", hidden_noise_std), rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs_for(rngs, "dropout", draws=dropout_rate > 0))
        self.head = nnx.Linear(sizes[-1], out_features, bias_init=ZEROS, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The last hidden representation (the trunk of :class:`MultiTaskMLP`)."""
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: expected inputs of shape (batch, {self.in_features}), got {x.shape}."
            )
        x = self.input_noise(x)
        for layer in self.layers:
            x = self.activation(layer(x))
            if self.record_activations:
                self.sow(nnx.Intermediate, "activations", x)
            x = self.dropout(self.hidden_noise(x))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``(batch, in_features)`` inputs to ``(batch, out_features)`` outputs."""
        return self.head(self.features(x))


class CNN(nnx.Module):
    """A small convolutional classifier for images of any size (8x8 digits, 28x28 MNIST).

    ``[Conv(3x3, SAME) -> relu -> avg_pool(2)] * len(features) -> global average pool ->
    Dropout -> Linear``. Global average pooling makes the head independent of the image
    size. Every bias (convolutions and head) is initialized to zero.

    Args:
      in_channels: channels of the input images (``(batch, height, width, channels)``).
      num_classes: number of output logits.
      features: output channels of each convolution block.
      dropout_rate: dropout before the head, in [0, 1).
      rngs: ``nnx.Rngs`` with ``params``, and ``dropout`` (or ``default``) where
        ``dropout_rate`` is above zero.

    Returns:
      The module; calling it maps ``(batch, h, w, in_channels)`` to ``(batch, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        features: Sequence[int] = (16, 32),
        dropout_rate: float = 0.0,
        rngs: nnx.Rngs,
    ):
        fn = "CNN"
        self.in_channels = _checks.check_positive_int(fn, "in_channels", in_channels)
        _checks.check_positive_int(fn, "num_classes", num_classes)
        widths = [_checks.check_positive_int(fn, f"features[{i}]", f) for i, f in enumerate(features)]
        _check_rate(fn, dropout_rate)
        sizes = [in_channels, *widths]
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, kernel_size=(3, 3), padding="SAME", bias_init=ZEROS, rngs=rngs)
                for a, b in zip(sizes[:-1], sizes[1:])
            ]
        )
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs_for(rngs, "dropout", draws=dropout_rate > 0))
        self.head = nnx.Linear(sizes[-1], num_classes, bias_init=ZEROS, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``(batch, height, width, in_channels)`` images to logits."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"CNN: expected images of shape (batch, height, width, {self.in_channels}), got {x.shape}."
            )
        for conv in self.convs:
            x = nnx.relu(conv(x))
            if min(x.shape[1:3]) >= 2:
                x = _average_pool_2x2(x)
        return self.head(self.dropout(jnp.mean(x, axis=(1, 2))))


class MultiTaskMLP(nnx.Module):
    """A shared trunk with one linear head per task (multi-task learning).

    The tasks share the trunk's weights, which the third source article describes as a
    regularizer: every task's loss constrains them. ``__call__`` returns a dict of
    outputs by task name and :meth:`weighted_loss` combines per-task losses with the
    task weights.

    Args:
      in_features: input width.
      trunk: widths of the shared hidden layers (at least one).
      tasks: output width of each task's head, by task name.
      task_weights: weight of each task's loss, by task name; 1.0 for each by default.
      activation: hidden activation.
      dropout_rate: dropout in the trunk, in [0, 1).
      rngs: ``nnx.Rngs`` with ``params``, and ``dropout`` (or ``default``) where
        ``dropout_rate`` is above zero.

    Returns:
      The module; calling it returns ``{task: (batch, tasks[task])}``.
    """

    def __init__(
        self,
        in_features: int,
        trunk: Sequence[int],
        tasks: Mapping[str, int],
        *,
        task_weights: Mapping[str, float] | None = None,
        activation: Activation = nnx.relu,
        dropout_rate: float = 0.0,
        rngs: nnx.Rngs,
    ):
        fn = "MultiTaskMLP"
        if not trunk:
            raise ValueError(f"{fn}: trunk must list at least one hidden width, got {trunk!r}.")
        if not tasks:
            raise ValueError(f"{fn}: tasks must name at least one task, got {tasks!r}.")
        weights = dict.fromkeys(tasks, 1.0) if task_weights is None else dict(task_weights)
        if set(weights) != set(tasks):
            raise ValueError(f"{fn}: task_weights must name the same tasks as tasks, got {sorted(weights)}.")
        if any(not w >= 0 for w in weights.values()):
            raise ValueError(f"{fn}: task weights must be non-negative, got {weights}.")
        self.task_weights = weights
        # The trunk is an MLP without its own head: its last hidden layer feeds the heads.
        self.trunk = MLP(
            in_features, trunk[:-1], trunk[-1], activation=activation, dropout_rate=dropout_rate, rngs=rngs
        )
        self.activation = activation
        self.heads = nnx.Dict(
            {
                name: nnx.Linear(
                    trunk[-1], _checks.check_positive_int(fn, f"tasks[{name!r}]", n), bias_init=ZEROS, rngs=rngs
                )
                for name, n in tasks.items()
            }
        )

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """Maps ``(batch, in_features)`` inputs to a dict of per-task outputs."""
        shared = self.activation(self.trunk(x))
        return {name: head(shared) for name, head in self.heads.items()}

    def weighted_loss(self, losses: Mapping[str, jax.Array]) -> jax.Array:
        """``sum_t task_weights[t] * losses[t]``.

        Args:
          losses: a scalar loss per task, by task name.

        Returns:
          The weighted total, a scalar.
        """
        if set(losses) != set(self.task_weights):
            raise ValueError(
                f"MultiTaskMLP.weighted_loss: losses must name the tasks {sorted(self.task_weights)}, "
                f"got {sorted(losses)}."
            )
        return sum(self.task_weights[name] * jnp.asarray(loss, jnp.float32) for name, loss in losses.items())
