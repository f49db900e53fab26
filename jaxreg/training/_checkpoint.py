"""Orbax checkpoints of one :func:`~jaxreg.training.fit` run: save every few epochs, resume from the newest intact one.

A checkpoint holds two items: ``arrays`` (the model and optimizer state, the
early-stopping state, ...) and ``meta`` (JSON: the epoch, whether the run stopped, the
history, and the fingerprint of the arguments that wrote it). A readable checkpoint of
another run (another fingerprint) is refused; one that cannot be read is deleted with a
warning, and the next older one is tried.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _checks

_FINGERPRINT_NAMES = {
    "train_data": "other training data (of the same size)",
    "state": "another model, optimizer or early_stopping, or with(out) average (other state)",
}


def is_key(x: Any) -> bool:
    """True for a typed PRNG key array (``jax.random.key``)."""
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode(tree: Any) -> Any:
    # orbax stores arrays of numbers; typed PRNG keys (nnx.Rngs) are stored as their data.
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _decode(tree: Any, template: Any) -> Any:
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if is_key(t) else x, tree, template
    )


def digest_of_values(tree: Any) -> str:
    """A digest of the arrays' shapes, dtypes and values (the training data)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        leaf = np.asarray(leaf)
        digest.update(f"{leaf.shape} {leaf.dtype};".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def digest_of_structure(tree: Any) -> str:
    """A digest of the tree's paths, shapes and dtypes (the model and optimizer state)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    text = "\n".join(f"{jax.tree_util.keystr(path)} {jnp.shape(x)} {jnp.result_type(x)}" for path, x in leaves)
    return hashlib.sha256(text.encode()).hexdigest()


class Checkpoints:
    """The checkpoints in ``directory``: :meth:`restore` the newest intact one, :meth:`save`, :meth:`close`.

    ``fingerprint`` (JSON-able) is what a resumed run must share with the run that wrote
    the checkpoint; a checkpoint past ``epochs`` is refused too. Call
    :meth:`close` at the end: orbax writes asynchronously.
    """

    def __init__(
        self, fn: str, directory: str | Path, *, every: int, max_to_keep: int, epochs: int, fingerprint: dict[str, Any]
    ) -> None:
        self._ocp = _checks.import_extra(fn, "orbax.checkpoint", "orbax-checkpoint", "checkpoint_dir needs")
        self._fn, self._every, self._epochs, self._fingerprint = fn, every, epochs, fingerprint
        self._directory = Path(directory).absolute()
        options = self._ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
        self._manager = self._ocp.CheckpointManager(self._directory, options=options)
        self._after_restore = contextlib.ExitStack()

    def close(self) -> None:
        """Waits for the writes in flight, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
        self._after_restore.close()

    def due(self, epoch: int, stopped: bool) -> bool:
        """Whether the 1-based ``epoch`` is saved: every ``every`` epochs, the last one, and a stop."""
        return epoch % self._every == 0 or epoch == self._epochs or stopped

    def save(self, epoch: int, arrays: Any, meta: dict[str, Any]) -> None:
        """Writes ``arrays`` and ``meta`` (with the fingerprint added) as the checkpoint of ``epoch``."""
        ocp = self._ocp
        meta = {**meta, "fingerprint": self._fingerprint}
        args = ocp.args.Composite(arrays=ocp.args.StandardSave(_encode(arrays)), meta=ocp.args.JsonSave(meta))
        self._manager.save(epoch, args=args)

    def restore(self, template: Any) -> tuple[dict[str, Any], Any] | None:
        """``(meta, arrays)`` of the newest intact checkpoint (arrays shaped as ``template``), or None if none.

        A checkpoint that cannot be read (a damaged file, a write cut short) is deleted
        with a warning naming it, and the next older one is tried: resuming is exact, so
        the epochs after it are recomputed to the same numbers. A readable checkpoint of
        another run raises (see :meth:`_check_meta`).
        """
        if self._manager.latest_step() is None:
            return None
        self._after_restore.enter_context(_ignoring_closed_event_loops())
        ocp, directory = self._ocp, self._directory
        damaged = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            except Exception as err:  # any failure to read: a missing, truncated or garbled file
                damaged.append((step, err))
                continue
            self._check_meta(meta)
            try:
                restore = ocp.args.StandardRestore(_encode(template))
                arrays = self._manager.restore(step, args=ocp.args.Composite(arrays=restore)).arrays
            except Exception as err:  # the fingerprint matched, so the arrays are damaged
                damaged.append((step, err))
                continue
            break
        else:
            step, err = damaged[0]
            raise ValueError(
                f"{self._fn}: no checkpoint in {directory} can be read (the newest, {directory}/{step}: "
                f"{type(err).__name__}: {_first_line(err)}); use a new checkpoint_dir."
            )
        for bad, err in damaged:
            warnings.warn(
                f"{self._fn}: the checkpoint {directory}/{bad} is damaged ({type(err).__name__}: {_first_line(err)}); "
                f"deleted it and resumed from {directory}/{step}.",
                RuntimeWarning,
                stacklevel=3,
            )
            self._manager.delete(bad)
        return meta, _decode(arrays, template)

    def _check_meta(self, meta: dict[str, Any]) -> None:
        """Raises a ValueError if the checkpoint was written by another run or is past ``epochs``."""
        fn, directory = self._fn, self._directory
        if meta["epoch"] > self._epochs:
            raise ValueError(
                f"{fn}: the checkpoint in {directory} is at epoch {meta['epoch']}, beyond epochs={self._epochs}; "
                "give epochs >= that or use a new checkpoint_dir."
            )
        for name, value in self._fingerprint.items():
            written = meta["fingerprint"].get(name)
            if written == value:
                continue
            what = _FINGERPRINT_NAMES.get(name)
            if what is None:
                what = f"{name}={written!r}, got {name}={value!r}"
            raise ValueError(
                f"{fn}: the checkpoint in {directory} was written with {what}; resume with the same "
                "arguments or use a new checkpoint_dir."
            )


@contextlib.contextmanager
def _ignoring_closed_event_loops() -> Iterator[None]:
    """Drops the ``RuntimeError('Event loop is closed')`` of reads orbax left running.

    When one array of a damaged checkpoint cannot be read, orbax's restore fails at once
    and closes its event loop while tensorstore's other reads are still in flight; as
    each of them completes, its callback raises on the closed loop, and Python prints one
    traceback per array. The warning that names the damaged checkpoint says it all.
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else ""
