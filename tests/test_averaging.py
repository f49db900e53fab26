"""Weight averaging: torch's AveragedModel numbers (EMA and SWA), update_bn's statistics, and fit(average=...)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from torch.optim import swa_utils

import jaxreg
from jaxreg.training import WeightAveraging, ema, fit, swa, update_batch_stats

RNG = np.random.default_rng(0)
STEPS = 7
# A sequence of params, as a training run would visit them: a drift plus noise.
SEQ = {
    "weight": np.cumsum(RNG.standard_normal((STEPS, 2, 3)), axis=0).astype(np.float32),
    "bias": np.cumsum(RNG.standard_normal((STEPS, 2)), axis=0).astype(np.float32),
}
TOL = 1e-6


@functools.partial(jax.jit, static_argnums=0)
def averages(averaging, seq):
    """``state.averaged`` and ``state.count`` after each update of ``seq``, as one compiled scan."""

    def step(state, params):
        state = averaging.update(state, params)
        return state, (state.averaged, state.count)

    state = averaging.init(jax.tree.map(lambda a: a[0], seq))
    return jax.lax.scan(step, state, seq)[1]


def torch_averages(multi_avg_fn, averaged_updates):
    """torch's AveragedModel over SEQ, ``update_parameters`` called on the updates listed (0-based)."""
    model = torch.nn.Linear(3, 2)
    averaged = swa_utils.AveragedModel(model, multi_avg_fn=multi_avg_fn)
    out = []
    for t in range(STEPS):
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(SEQ["weight"][t]))
            model.bias.copy_(torch.from_numpy(SEQ["bias"][t]))
        if t in averaged_updates:
            averaged.update_parameters(model)
        out.append(
            {
                "weight": averaged.module.weight.detach().numpy().copy(),
                "bias": averaged.module.bias.numpy(force=True).copy(),
            }
        )
    return out


def max_diff(got, want, count):
    """Largest difference over the updates after the first averaged one (torch's average before it is stale)."""
    diffs = [
        np.abs(np.asarray(got[name][t]) - want[t][name]).max()
        for t in range(STEPS)
        if count[t] > 0
        for name in ("weight", "bias")
    ]
    return max(diffs)


@pytest.mark.parametrize(
    "averaging, multi_avg_fn",
    [
        (ema(0.9), swa_utils.get_ema_multi_avg_fn(0.9)),
        (swa(), None),  # AveragedModel's default: the equal-weight running mean
        (ema(0.6, start=2, every=2), swa_utils.get_ema_multi_avg_fn(0.6)),
        (swa(start=1, every=3), None),
    ],
    ids=["ema", "swa", "ema-start-every", "swa-start-every"],
)
def test_matches_torch_averaged_model(averaging, multi_avg_fn):
    # Update u (1-based) is averaged when u > start and (u - start) % every == 0.
    chosen = {t for t in range(STEPS) if t + 1 > averaging.start and (t + 1 - averaging.start) % averaging.every == 0}
    want = torch_averages(multi_avg_fn, chosen)
    got, count = averages(averaging, SEQ)
    np.testing.assert_array_equal(count, np.cumsum([t in chosen for t in range(STEPS)]))
    assert max_diff(got, want, count) <= TOL
    # Negative control: the other kind of average is far off.
    other = (
        swa(averaging.start, averaging.every)
        if averaging.decay is not None
        else ema(0.9, start=averaging.start, every=averaging.every)
    )
    assert max_diff(averages(other, SEQ)[0], want, count) > 100 * TOL


def test_before_the_first_averaged_update_the_average_follows_the_params():
    got, count = averages(swa(start=3), SEQ)
    for t in range(3):
        assert count[t] == 0
        np.testing.assert_array_equal(got["weight"][t], SEQ["weight"][t])
    np.testing.assert_array_equal(got["weight"][3], SEQ["weight"][3])  # the first averaged params are copied
    np.testing.assert_allclose(got["weight"][4], SEQ["weight"][3:5].mean(0), rtol=1e-6)


def test_dtypes_integer_leaves_and_vmap():
    averaging = ema(0.5)
    params = {"w": jnp.ones(3, jnp.bfloat16), "steps": jnp.asarray(1, jnp.int32)}
    state = averaging.update(averaging.init(params), params)
    state = averaging.update(state, {"w": jnp.full(3, 3.0, jnp.bfloat16), "steps": jnp.asarray(2, jnp.int32)})
    assert state.averaged["w"].dtype == jnp.bfloat16 and float(state.averaged["w"][0]) == 2.0
    assert int(state.averaged["steps"]) == 2  # not averaged: the latest value
    # One lane per sequence: vmap of the whole scan equals each lane on its own.
    lanes = jax.tree.map(lambda a: np.stack([a, 2 * a]), SEQ)
    mapped, _ = jax.vmap(functools.partial(averages, swa()))(lanes)
    np.testing.assert_allclose(mapped["bias"][1], 2 * np.asarray(averages(swa(), SEQ)[0]["bias"]), rtol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ema(1.5), r"WeightAveraging: decay must be a number in \[0, 1\] .* got 1.5"),
        (lambda: ema(-0.1), r"WeightAveraging: decay must be a number in \[0, 1\]"),
        (lambda: ema("0.9"), r"WeightAveraging: decay must be a number in \[0, 1\]"),
        (lambda: swa(start=-1), r"WeightAveraging: start must be an int >= 0 .* got -1"),
        (lambda: swa(every=0), r"WeightAveraging: every must be a positive int, got 0"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_numpy_numbers_give_equal_hashable_averagings():
    # fit compiles its epoch per averaging (a static argument): equal ones share it.
    assert ema(np.float32(0.5)) == ema(0.5) and hash(swa(np.int64(2))) == hash(swa(2))


# ----------------------------------------------------------------------- update_bn


class Net(nnx.Module):
    """Linear -> BatchNorm -> Dropout: batch statistics and a dropout update_batch_stats turns off."""

    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.norm(self.linear(x)))


def rng_state(model):
    return [
        np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree.leaves(nnx.state(model, nnx.RngState))
    ]


def test_update_batch_stats_matches_torch_update_bn():
    x = (RNG.standard_normal((40, 3)) * 3 + 1).astype(np.float32)
    model = Net(nnx.Rngs(0))
    rngs_before = rng_state(model)
    torch_model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        torch_model[0].weight.copy_(torch.tensor(np.asarray(model.linear.kernel[...]).T))
        torch_model[0].bias.copy_(torch.tensor(np.asarray(model.linear.bias[...])))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x)), batch_size=10)
    swa_utils.update_bn(([b] for (b,) in loader), torch_model)
    assert update_batch_stats(model, x, batch_size=10) is model
    bn = torch_model[1]
    np.testing.assert_allclose(model.norm.mean[...], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    # torch's running variance is the unbiased one (batch variance * 10 / 9), flax's the biased one.
    np.testing.assert_allclose(model.norm.var[...], bn.running_var.numpy() * 9 / 10, rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(rng_state(model), rngs_before))  # no dropout draws
    # Negative control: one pass over all 40 samples is not the mean over the four batches' statistics.
    whole = update_batch_stats(Net(nnx.Rngs(0)), x)
    assert np.abs(np.asarray(whole.norm.var[...]) - np.asarray(model.norm.var[...])).max() > 1e-3


def test_update_batch_stats_without_batch_norm_changes_nothing():
    model = jaxreg.nn.MLP(3, [4], 2, rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, jax.tree.leaves(nnx.state(model, nnx.Param)))
    update_batch_stats(model, np.ones((4, 3), np.float32))
    for a, b in zip(before, jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ fit(average=)

X = RNG.standard_normal((96, 6)).astype(np.float32)
Y = (X[:, 0] - X[:, 1] > 0).astype(np.int32)
TRAIN, VAL = (X[:64], Y[:64]), (X[64:], Y[64:])
TX = optax.sgd(0.1)
EVERY_EPOCH = swa(every=4)  # 64 // 16 = 4 steps an epoch: the mean of the end-of-epoch params


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def params(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def train(average=None, on_epoch_end=None, **kwargs):
    model = jaxreg.nn.MLP(6, [16], 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, TX, wrt=nnx.Param)
    kwargs = {"key": jax.random.key(1), "epochs": 3, "batch_size": 16, "progress": False, **kwargs}
    history = fit(model, optimizer, loss_fn, TRAIN, VAL, average=average, on_epoch_end=on_epoch_end, **kwargs)
    return model, history


@pytest.fixture(scope="module")
def raw_and_averaged():
    raw, raw_history = train()
    model, history = train(EVERY_EPOCH)
    return raw, raw_history, model, history


def test_fit_returns_the_average_and_validates_it(raw_and_averaged):
    raw, raw_history, model, history = raw_and_averaged
    # The training trajectory is the same with and without averaging.
    np.testing.assert_allclose(history.train_loss, raw_history.train_loss, rtol=1e-6)
    # The oracle: the end-of-epoch params of the same run (fit writes each epoch into the
    # model before calling on_epoch_end), averaged.
    seen = []
    probe = jaxreg.nn.MLP(6, [16], 2, rngs=nnx.Rngs(0))
    fit(
        probe,
        nnx.Optimizer(probe, TX, wrt=nnx.Param),
        loss_fn,
        TRAIN,
        VAL,
        key=jax.random.key(1),
        epochs=3,
        batch_size=16,
        progress=False,
        on_epoch_end=lambda epoch, record: seen.append(params(probe)),
    )
    want = [np.mean(leaves, axis=0) for leaves in zip(*seen)]
    for got, w in zip(params(model), want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(params(model), params(raw))) > 1e-3  # not the last params
    # Validation is on the averaged weights: the first epoch's average is its params, later ones differ.
    assert history.val_loss[0] == pytest.approx(raw_history.val_loss[0], rel=1e-6)
    assert not np.isclose(history.val_loss[-1], raw_history.val_loss[-1], rtol=1e-4)
    model.eval()
    assert float(loss_fn(model, *VAL)) == pytest.approx(history.val_loss[-1], rel=1e-5)


class Interrupt(Exception):
    pass


def test_an_interrupted_averaged_run_resumes_to_the_same_average(tmp_path, raw_and_averaged):
    _, _, want, want_history = raw_and_averaged

    def interrupt(epoch, record):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(EVERY_EPOCH, on_epoch_end=interrupt, checkpoint_dir=tmp_path)
    model, history = train(EVERY_EPOCH, checkpoint_dir=tmp_path)
    assert history.resumed_from == 2
    for got, w in zip(params(model), params(want)):
        np.testing.assert_array_equal(got, w)
    np.testing.assert_array_equal(history.val_loss, want_history.val_loss)
    with pytest.raises(ValueError, match=r"written with average=\{'decay': None, 'start': 0, 'every': 4\}, got "):
        train(ema(0.9, every=4), checkpoint_dir=tmp_path)  # the same state, another average


def test_fit_names_a_wrong_average():
    model = jaxreg.nn.MLP(6, [16], 2, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"fit: average must be a jaxreg.training.ema\(...\) or swa\(...\), got 0.9"):
        fit(
            model,
            nnx.Optimizer(model, TX, wrt=nnx.Param),
            loss_fn,
            TRAIN,
            key=jax.random.key(0),
            epochs=1,
            batch_size=8,
            average=0.9,
        )
    assert isinstance(ema(), WeightAveraging)
