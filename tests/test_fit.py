"""jaxreg.training.fit: an interrupted run resumes to the same parameters, and the loop does what it says."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxreg
from jaxreg.training import EarlyStopping, fit

RNG = np.random.default_rng(0)
X = RNG.standard_normal((96, 6)).astype(np.float32)
Y = (X[:, 0] - X[:, 1] > 0).astype(np.int32)
TRAIN, VAL = (X[:64], Y[:64]), (X[64:], Y[64:])


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def accuracy(model, x, y):
    return jnp.mean((jnp.argmax(model(x), -1) == y).astype(jnp.float32))


AUGMENTED_SHAPES = []  # shapes noise_augment was traced with


def noise_augment(key, x):
    AUGMENTED_SHAPES.append(x.shape)
    return x + 0.1 * jax.random.normal(key, x.shape, x.dtype)


# One chain for every test: fit's compiled epoch is keyed by (architecture, optimizer,
# loss, augment, batch size), so the runs below share their compilations.
TX = optax.chain(
    jaxreg.clip_by_global_norm(1.0),
    optax.adam(1e-2),
    jaxreg.decoupled_weight_decay(1e-2, learning_rate=1e-2, mask=jaxreg.masks.weights_only),
    # A pruning mask computed from the params at init (every fourth weight pruned): state that reads params.
    jaxreg.pruning.keep_pruned(lambda p: jax.tree.map(lambda w: jnp.arange(w.size).reshape(w.shape) % 4 != 0, p)),
)


def make(seed=0):
    """A model with dropout and noise (RNG state) and a chain with state that reads params."""
    model = jaxreg.nn.MLP(6, [16], 2, dropout_rate=0.2, input_noise_std=0.05, rngs=nnx.Rngs(seed))
    with jax.numpy_dtype_promotion("standard"):
        return model, nnx.Optimizer(model, TX, wrt=nnx.Param)


def run(model, optimizer, **kwargs):
    kwargs = {
        "key": jax.random.key(1),
        "epochs": 4,
        "batch_size": 16,
        "metric_fn": accuracy,
        "augment": noise_augment,
        "progress": False,
        **kwargs,
    }
    with jax.numpy_dtype_promotion("standard"):
        return fit(model, optimizer, loss_fn, TRAIN, VAL, **kwargs)


def leaves(model, optimizer):
    return [
        np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree.leaves(nnx.state((model, optimizer)))
    ]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


class Interrupt(Exception):
    pass


def interrupt_after(epoch):
    def callback(e, record):
        if e == epoch:
            raise Interrupt

    return callback


@pytest.fixture(scope="module")
def straight():
    """Four uninterrupted epochs with early stopping watching (but not stopping)."""
    model, optimizer = make()
    history = run(model, optimizer, early_stopping=EarlyStopping(patience=10), restore_best=False)
    return leaves(model, optimizer), history


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path, straight):
    want, want_history = straight
    model, optimizer = make()
    stopper = EarlyStopping(patience=10)
    with pytest.raises(Interrupt):
        run(
            model,
            optimizer,
            early_stopping=stopper,
            restore_best=False,
            checkpoint_dir=tmp_path,
            on_epoch_end=interrupt_after(2),
        )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["1", "2"]
    # A fresh process would build its model anew: other seeds, to show that everything is restored.
    model, optimizer = make(seed=7)
    history = run(model, optimizer, early_stopping=stopper, restore_best=False, checkpoint_dir=tmp_path)
    assert history.resumed_from == 2 and history.epochs == 4
    assert_same(leaves(model, optimizer), want)  # bitwise: params, Adam moments, keep masks, RNG counters
    np.testing.assert_array_equal(history.train_loss, want_history.train_loss)
    np.testing.assert_array_equal(history.val_loss, want_history.val_loss)
    assert history.best_epoch == want_history.best_epoch


def test_resume_recomputes_epochs_after_the_last_checkpoint(tmp_path, straight):
    want, _ = straight
    model, optimizer = make()
    es = EarlyStopping(patience=10)
    with pytest.raises(Interrupt):  # checkpoints at epoch 2 only; epoch 3 is lost and redone
        run(
            model,
            optimizer,
            early_stopping=es,
            restore_best=False,
            checkpoint_dir=tmp_path,
            checkpoint_every=2,
            on_epoch_end=interrupt_after(3),
        )
    model, optimizer = make()
    history = run(model, optimizer, early_stopping=es, restore_best=False, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert history.resumed_from == 2
    assert_same(leaves(model, optimizer), want)


def test_a_shorter_run_extended_equals_the_long_run(tmp_path, straight):
    want, _ = straight
    model, optimizer = make()
    es = EarlyStopping(patience=10)
    first = run(model, optimizer, early_stopping=es, restore_best=False, checkpoint_dir=tmp_path, epochs=3)
    assert first.epochs == 3 and not first.stopped_early
    model, optimizer = make()
    run(model, optimizer, early_stopping=es, restore_best=False, checkpoint_dir=tmp_path)
    assert_same(leaves(model, optimizer), want)


def test_history_and_the_model_updated_in_place(straight):
    _, history = straight
    assert history.train_loss.shape == history.val_loss.shape == history.val_metric.shape == (4,)
    assert history.train_loss[-1] < history.train_loss[0] and history.val_loss[-1] < history.val_loss[0]
    assert np.all((history.val_metric >= 0) & (history.val_metric <= 1)) and np.all(history.epoch_time > 0)
    assert history.resumed_from == 0 and not history.stopped_early
    # Without val_data or metric_fn the columns are NaN; the model passed in is trained.
    model, optimizer = make()
    before = leaves(model, optimizer)
    with jax.numpy_dtype_promotion("standard"):
        h = fit(
            model, optimizer, loss_fn, TRAIN, key=jax.random.key(0), epochs=np.int64(1), batch_size=16, progress=False
        )  # NumPy integers are ints, as in scikit-learn
    assert np.isnan(h.val_loss).all() and np.isnan(h.val_metric).all()
    assert not all(np.array_equal(a, b) for a, b in zip(before, leaves(model, optimizer)))


def test_early_stopping_stops_and_restores_the_best_epoch(tmp_path):
    # A min_delta no epoch can beat: epoch 1 is best (the first score always is), epoch 2 stops.
    model, optimizer = make()
    stopper = EarlyStopping(patience=1, min_delta=1e9)
    h = run(model, optimizer, early_stopping=stopper, epochs=10, checkpoint_dir=tmp_path, checkpoint_every=5)
    assert h.stopped_early and h.epochs == 2 and h.best_epoch == 1
    one_epoch, opt1 = make()
    run(one_epoch, opt1, epochs=1)
    assert_same(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(one_epoch, nnx.Param)))
    # The stop was checkpointed: resuming trains nothing and restores the same best epoch.
    again, opt2 = make(seed=5)
    h2 = run(again, opt2, early_stopping=stopper, epochs=10, checkpoint_dir=tmp_path, checkpoint_every=5)
    assert h2.resumed_from == 2 and h2.epochs == 2 and h2.stopped_early and h2.best_epoch == 1
    assert_same(jax.tree.leaves(nnx.state(again, nnx.Param)), jax.tree.leaves(nnx.state(model, nnx.Param)))


class BatchNormNet(nnx.Module):
    """Linear -> BatchNorm -> relu -> Linear: state beside the parameters (batch statistics)."""

    def __init__(self, rngs):
        self.hidden = nnx.Linear(6, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.out = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.norm(self.hidden(x))))


def test_restore_best_restores_batch_statistics_too():
    # As Keras' restore_best_weights: the returned model is the best epoch's, BatchNorm's
    # running statistics included, so it scores the best epoch's validation loss.
    model = BatchNormNet(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    stopper = EarlyStopping(patience=3, min_delta=1e9)  # epoch 1 is best, epoch 4 stops
    h = fit(
        model,
        optimizer,
        loss_fn,
        TRAIN,
        VAL,
        key=jax.random.key(0),
        epochs=10,
        batch_size=16,
        early_stopping=stopper,
        progress=False,
    )
    assert h.epochs == 4 and h.best_epoch == 1
    model.eval()
    assert float(loss_fn(model, *VAL)) == pytest.approx(h.val_loss[0], rel=1e-6)
    assert not np.isclose(h.val_loss[0], h.val_loss[-1], rtol=1e-3)
    one_epoch = BatchNormNet(nnx.Rngs(0))
    fit(
        one_epoch,
        nnx.Optimizer(one_epoch, optax.sgd(0.1), wrt=nnx.Param),
        loss_fn,
        TRAIN,
        key=jax.random.key(0),
        epochs=1,
        batch_size=16,
        progress=False,
    )
    assert_same(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(one_epoch)))


def test_fit_trains_a_cnn():
    images = RNG.standard_normal((32, 8, 8, 1)).astype(np.float32)
    labels = (images[:, :4].mean(axis=(1, 2, 3)) > images[:, 4:].mean(axis=(1, 2, 3))).astype(np.int32)
    model = jaxreg.nn.CNN(1, 2, features=(4,), dropout_rate=0.1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    before = np.asarray(model.convs[0].kernel[...])
    h = fit(model, optimizer, loss_fn, (images, labels), key=jax.random.key(0), epochs=2, batch_size=8, progress=False)
    assert np.all(np.isfinite(h.train_loss)) and not np.array_equal(before, model.convs[0].kernel[...])


def test_the_loss_reaches_transforms_that_read_it_as_value():
    # reduce_on_plateau reads the loss (value=): with an atol no step can beat, every step
    # after the first is a plateau and halves the scale. One full batch a step.
    model = jaxreg.nn.MLP(6, [16], 2, rngs=nnx.Rngs(0))
    plateau = optax.contrib.reduce_on_plateau(patience=1, factor=0.5, atol=1e3)
    optimizer = nnx.Optimizer(model, optax.chain(optax.sgd(0.1), plateau), wrt=nnx.Param)
    with jax.numpy_dtype_promotion("standard"):  # reduce_on_plateau is not strict-promotion clean
        h = fit(model, optimizer, loss_fn, TRAIN, key=jax.random.key(0), epochs=4, batch_size=64, progress=False)
        want = plateau.init(None)
        for loss in h.train_loss:  # the loss of each step, as fit passed it
            _, want = plateau.update(jnp.zeros(()), want, value=jnp.float32(loss))
    got = optimizer.opt_state[1]
    assert float(got.scale[...]) == float(want.scale) == 0.125
    assert float(got.best_value[...]) == float(want.best_value) == np.float32(h.train_loss[0])
    assert int(got.count[...]) == int(want.count)


def test_callback_returning_true_stops():
    model, optimizer = make()
    h = run(model, optimizer, on_epoch_end=lambda epoch, record: epoch == 2)
    assert h.epochs == 2 and h.stopped_early


def test_augment_applies_to_training_batches_only(straight):
    assert set(AUGMENTED_SHAPES) == {(16, 6)}  # training batches; never the 32 validation rows


def test_progress_bar_shows_epoch_losses_and_time_left(capsys):
    model, optimizer = make()
    run(model, optimizer, epochs=2, progress="digits-mlp")
    err = capsys.readouterr().err
    assert "digits-mlp" in err and "2/2" in err and "val_loss=" in err and "<" in err  # elapsed<remaining


def test_missing_orbax_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    model, optimizer = make()
    with pytest.raises(ImportError, match=r"pip install 'jaxreg\[train\]'"):
        run(model, optimizer, checkpoint_dir=tmp_path)


def test_checkpoint_from_other_arguments_is_refused(tmp_path):
    model, optimizer = make()
    run(model, optimizer, epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"fit: the checkpoint in .* written with batch_size=16, got batch_size=32"):
        run(model, optimizer, epochs=2, batch_size=32, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"fit: the checkpoint in .* written with key=\[0, 1\], got key=\[0, 7\]"):
        run(model, optimizer, epochs=2, key=jax.random.key(7), checkpoint_dir=tmp_path)
    run(model, optimizer, epochs=2, checkpoint_dir=tmp_path)  # the same arguments: resumes, trains epoch 2
    with pytest.raises(ValueError, match=r"fit: the checkpoint in .* is at epoch 2, beyond epochs=1"):
        run(model, optimizer, epochs=1, checkpoint_dir=tmp_path)


def test_a_stop_the_callback_asks_for_is_checkpointed(tmp_path):
    model, optimizer = make()
    stop_at_2 = lambda epoch, record: epoch == 2  # noqa: E731
    h = run(model, optimizer, checkpoint_dir=tmp_path, checkpoint_every=3, on_epoch_end=stop_at_2)
    assert h.epochs == 2 and h.stopped_early
    # The same call again: the checkpoint says the run stopped, so nothing more is trained.
    again, opt2 = make(seed=5)
    h2 = run(again, opt2, checkpoint_dir=tmp_path, checkpoint_every=3, on_epoch_end=stop_at_2)
    assert h2.resumed_from == 2 and h2.epochs == 2 and h2.stopped_early
    assert_same(leaves(again, opt2), leaves(model, optimizer))


def test_each_checkpoint_holds_the_history_up_to_its_epoch(tmp_path, monkeypatch, straight):
    import orbax.checkpoint as ocp

    saved = []  # the meta handed to orbax, which writes it asynchronously

    def json_save(item):
        saved.append(item)
        return real_json_save(item)

    real_json_save = ocp.args.JsonSave
    monkeypatch.setattr(ocp.args, "JsonSave", json_save)
    model, optimizer = make()
    es = EarlyStopping(patience=10)
    with pytest.raises(Interrupt):
        run(
            model,
            optimizer,
            early_stopping=es,
            restore_best=False,
            checkpoint_dir=tmp_path,
            on_epoch_end=interrupt_after(3),
        )
    # Once fit has run on, each saved meta still holds its own epochs only: a copy, not the live lists.
    assert [len(meta["history"]["train_loss"]) for meta in saved] == [meta["epoch"] for meta in saved] == [1, 2, 3]
    model, optimizer = make()
    history = run(model, optimizer, early_stopping=es, restore_best=False, checkpoint_dir=tmp_path)
    _, want = straight
    assert history.resumed_from == 3 and history.epochs == want.epochs == 4
    for name in ("train_loss", "val_loss", "val_metric"):
        np.testing.assert_array_equal(getattr(history, name), getattr(want, name))


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_newest_checkpoint_is_named_and_the_newest_intact_one_resumed(tmp_path, capfd, straight):
    want, want_history = straight
    model, optimizer = make()
    es = EarlyStopping(patience=10)
    with pytest.raises(Interrupt):
        run(
            model,
            optimizer,
            early_stopping=es,
            restore_best=False,
            checkpoint_dir=tmp_path,
            on_epoch_end=interrupt_after(2),
        )
    for path in (tmp_path / "2" / "arrays").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # the array data, not the metadata
            path.write_bytes(b"\1" * 50)
    capfd.readouterr()
    model, optimizer = make()
    with pytest.warns(RuntimeWarning, match=r"fit: the checkpoint .*/2 is damaged .* resumed from .*/1\."):
        history = run(model, optimizer, early_stopping=es, restore_best=False, checkpoint_dir=tmp_path)
    assert history.resumed_from == 1
    assert_same(leaves(model, optimizer), want)  # epochs 2-4 recomputed exactly
    np.testing.assert_array_equal(history.train_loss, want_history.train_loss)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err


def test_no_readable_checkpoint_is_an_error_naming_the_newest(tmp_path):
    model, optimizer = make()
    run(model, optimizer, epochs=1, checkpoint_dir=tmp_path)
    (tmp_path / "1" / "meta" / "metadata").write_text("{garbage")
    with pytest.raises(ValueError, match=r"fit: no checkpoint in .* can be read \(the newest, .*/1: JSONDecodeError"):
        run(model, optimizer, epochs=2, checkpoint_dir=tmp_path)


def test_a_checkpoint_of_other_data_or_another_optimizer_is_refused(tmp_path):
    model, optimizer = make()
    run(model, optimizer, epochs=1, checkpoint_dir=tmp_path)
    shuffled = (TRAIN[0][::-1], TRAIN[1][::-1])  # the same size, other order
    with pytest.raises(ValueError, match=r"fit: the checkpoint in .* was written with other training data"):
        with jax.numpy_dtype_promotion("standard"):
            fit(
                model,
                optimizer,
                loss_fn,
                shuffled,
                key=jax.random.key(1),
                epochs=2,
                batch_size=16,
                checkpoint_dir=tmp_path,
            )
    momentum = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    with pytest.raises(ValueError, match=r"written with another model, optimizer or early_stopping"):
        run(model, momentum, epochs=2, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"written with another model, optimizer or early_stopping"):
        run(model, optimizer, epochs=2, checkpoint_dir=tmp_path, early_stopping=EarlyStopping())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, r"fit: epochs must be a positive int, got 0"),
        ({"batch_size": 65}, r"fit: batch_size must be at most the 64 training samples, got 65"),
        ({"batch_size": 2.5}, r"fit: batch_size must be a positive int, got 2.5"),
        ({"checkpoint_every": 0}, r"fit: checkpoint_every must be a positive int, got 0"),
        (
            {"monitor": "accuracy"},
            r"fit: monitor must be one of 'val_loss', 'val_metric', 'train_loss', got 'accuracy'",
        ),
        (
            {"monitor": "val_metric", "metric_fn": None, "early_stopping": EarlyStopping()},
            r"fit: monitor='val_metric' needs metric_fn",
        ),
        ({"val_data": None, "early_stopping": EarlyStopping()}, r"fit: monitor='val_loss' needs val_data"),
        ({"train_data": (X[:64], Y[:63])}, r"fit: train_data arrays must share their first .* got shapes"),
        ({"val_data": X}, r"fit: val_data must be a pair \(inputs, targets\)"),
    ],
)
def test_bad_input(kwargs, message):
    model, optimizer = make()
    data = {"train_data": TRAIN, "val_data": VAL}
    for name in data:
        if name in kwargs:
            data[name] = kwargs.pop(name)
    kwargs = {"key": jax.random.key(0), "epochs": 1, "batch_size": 16, "metric_fn": accuracy, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit(model, optimizer, loss_fn, data["train_data"], data["val_data"], **kwargs)


def test_wrong_types_are_named():
    model, optimizer = make()
    with pytest.raises(TypeError, match=r"fit: optimizer must be an nnx.Optimizer, got GradientTransformation"):
        fit(model, optax.sgd(0.1), loss_fn, TRAIN, key=jax.random.key(0), epochs=1, batch_size=8)
    with pytest.raises(TypeError, match=r"fit: key must be a PRNG key such as jax.random.key\(0\), got 0"):
        fit(model, optimizer, loss_fn, TRAIN, key=0, epochs=1, batch_size=8)
    with pytest.raises(TypeError, match=r"fit: early_stopping must be a jaxreg.training.EarlyStopping"):
        fit(model, optimizer, loss_fn, TRAIN, VAL, key=jax.random.key(0), epochs=1, batch_size=8, early_stopping=3)
