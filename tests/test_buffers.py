"""jaxreg.write_into and jaxreg.nn.Optimizer(keep_grads=True): the gradients land in a
donated buffer (aliased, not among the temporaries, no copies), with the same numbers."""

import collections
import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxreg
from jaxreg.training import fit

RNG = np.random.default_rng(0)
# Two 1 MB kernels: big enough that the gradients dominate the step's temporaries.
PARAMS = {
    "a": jnp.asarray(RNG.standard_normal((512, 512)), jnp.float32),
    "b": jnp.asarray(RNG.standard_normal((512, 512)), jnp.float32),
}
X = jnp.asarray(RNG.standard_normal((8, 512)), jnp.float32)
GRAD_BYTES = sum(p.nbytes for p in PARAMS.values())
TX = jaxreg.chain(jaxreg.clip_by_global_norm(1.0), jaxreg.adam(1e-3), jaxreg.l1_prox(1e-3, learning_rate=1e-3))


def loss(params, x):
    return jnp.mean(jnp.tanh(x @ params["a"]) @ params["b"])


def step(params, state, grads, x, *, keep: bool | str):
    """The step; ``keep``: False (gradients not returned), "returned" or "write_into"."""
    new_grads = jax.grad(loss)(params, x)
    if keep == "write_into":
        new_grads = jaxreg.write_into(grads, new_grads)
    params, state = jaxreg.apply_step(TX, new_grads, state, params)
    return (params, state, new_grads) if keep else (params, state)


def _compiled(keep):
    carry = (PARAMS, TX.init(PARAMS), jax.tree.map(jnp.zeros_like, PARAMS))
    with jax.numpy_dtype_promotion("standard"):
        jitted = jax.jit(functools.partial(step, keep=keep), donate_argnums=(0, 1, 2))
        return jitted, jitted.lower(*carry, X).compile()


def _aliased_inputs(text):
    return {int(i) for i in re.findall(r": \((\d+), \{\}, may-alias\)", text)}


def test_write_into_returns_the_values_and_never_reads_the_buffer():
    values = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([1.5, -2.0])}
    poisoned = jax.tree.map(lambda v: jnp.full_like(v, jnp.nan), values)
    for fn in (jaxreg.write_into, jax.jit(jaxreg.write_into)):
        got = fn(poisoned, values)
        chex.assert_trees_all_equal(got, values)
        assert jax.tree.structure(got) == jax.tree.structure(values)


def test_the_tie_to_the_buffer_costs_nothing_once_compiled():
    # The select on a constant that keeps the buffer an operand is gone from the program.
    jitted = jax.jit(lambda buf, p, x: jaxreg.write_into(buf, jax.grad(loss)(p, x)), donate_argnums=0)
    text = jitted.lower(PARAMS, PARAMS, X).compile().as_text()
    assert "select" not in text
    assert {0, 1} <= _aliased_inputs(text)


def test_the_gradients_are_written_into_the_donated_buffer_without_copies():
    jitted, kept = _compiled("write_into")
    _, dropped = _compiled("returned")  # negative control: returned, but not through write_into
    _, plain = _compiled(False)  # the usual step: the gradients are temporaries
    n_state = len(jax.tree.leaves(TX.init(PARAMS)))
    buffer_inputs = {len(PARAMS) + n_state + i for i in range(len(PARAMS))}
    assert buffer_inputs <= _aliased_inputs(kept.as_text())
    assert not buffer_inputs & _aliased_inputs(dropped.as_text())  # jit dropped the unused buffer
    assert " copy(" not in kept.as_text()
    # The global norm keeps every gradient alive: in the plain step they are temporaries.
    assert plain.memory_analysis().temp_size_in_bytes >= GRAD_BYTES
    assert kept.memory_analysis().temp_size_in_bytes < GRAD_BYTES / 2
    # The same numbers, step after step, and the buffer holds the gradients.
    carry = [PARAMS, TX.init(PARAMS), jax.tree.map(jnp.zeros_like, PARAMS)]
    want = [PARAMS, TX.init(PARAMS)]
    with jax.numpy_dtype_promotion("standard"):
        plain_step, grad = jax.jit(functools.partial(step, keep=False)), jax.jit(jax.grad(loss))
        for _ in range(3):
            grads = grad(want[0], X)
            want = list(plain_step(*want, None, X))
            carry = list(jitted(*carry, X))
            chex.assert_trees_all_close(carry[2], grads, rtol=1e-6, atol=1e-9)
    chex.assert_trees_all_equal(carry[:2], want)


@pytest.mark.parametrize(
    "buffer, message",
    [
        ({"a": jnp.zeros((2, 2))}, "different tree structures .*'b'.*jnp.zeros_like"),
        ({"a": jnp.zeros((2, 2)), "b": jnp.zeros(4)}, r"buffer leaf 'b' is float32\[4\] but the value is float32\[3\]"),
        ({"a": jnp.zeros((2, 2)), "b": jnp.zeros(3, jnp.int32)}, r"'b' is int32\[3\] but the value is float32\[3\]"),
        (collections.OrderedDict(a=jnp.zeros((2, 2)), b=jnp.zeros(3)), "different tree structures .*containers differ"),
    ],
)
def test_write_into_bad_buffers(buffer, message):
    values = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match="jaxreg.write_into: .*" + message):
        jaxreg.write_into(buffer, values)


def _mlp_loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _train(keep_grads, tx, *, extra=False, steps=3):
    model = jaxreg.nn.MLP(6, (16,), 3, rngs=nnx.Rngs(0))
    optimizer = jaxreg.nn.Optimizer(model, tx, wrt=nnx.Param, keep_grads=keep_grads)

    @nnx.jit(donate_argnums=(0, 1))
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(_mlp_loss)(model, x, y)
        if extra:
            optimizer.update(model, grads, value=loss)
        else:
            optimizer.update(model, grads)
        return grads

    x, y = X[:, :6], jnp.arange(8) % 3
    for _ in range(steps):
        grads = train_step(model, optimizer, x, y)
    return model, optimizer, grads


@pytest.mark.parametrize(
    "tx, extra", [(TX, False), (optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)), False), (TX, True)]
)
def test_an_optimizer_that_keeps_its_gradients_takes_the_same_steps(tx, extra):
    with jax.numpy_dtype_promotion("standard"):
        kept_model, kept_optimizer, grads = _train(True, tx, extra=extra)
        model, optimizer, _ = _train(False, tx, extra=extra)
    chex.assert_trees_all_equal(nnx.state(kept_model, nnx.Param), nnx.state(model, nnx.Param))
    chex.assert_trees_all_equal(nnx.as_pure(kept_optimizer.grads), nnx.as_pure(nnx.state(grads, nnx.Param)))
    assert optimizer.grads is None
    assert all(
        isinstance(v, nnx.OptState)
        for v in jax.tree.leaves(kept_optimizer.grads, is_leaf=lambda v: isinstance(v, nnx.Variable))
    )


def test_a_split_optimizer_state_keeps_its_gradients_in_place():
    model = jaxreg.nn.MLP(512, (512,), 3, rngs=nnx.Rngs(0))
    optimizer = jaxreg.nn.Optimizer(model, TX, wrt=nnx.Param, keep_grads=True)
    graphdef, state = nnx.split((model, optimizer))

    def train_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        optimizer.update(model, nnx.grad(_mlp_loss)(model, x, y))
        return nnx.split((model, optimizer))[1]

    with jax.numpy_dtype_promotion("standard"):
        compiled = jax.jit(train_step, donate_argnums=0).lower(state, X, jnp.arange(8) % 3).compile()
    n_inputs = len(jax.tree.leaves(state))
    assert _aliased_inputs(compiled.as_text()) >= set(range(n_inputs)) - {
        i for i, v in enumerate(jax.tree.leaves(state)) if v.dtype != jnp.float32
    }
    assert " copy(" not in compiled.as_text()
    kernel_bytes = sum(v.nbytes for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert compiled.memory_analysis().temp_size_in_bytes < kernel_bytes / 2


def test_fit_trains_the_same_with_kept_gradients():
    x = RNG.standard_normal((32, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    runs = []
    for keep in (False, True):
        model = jaxreg.nn.MLP(6, (8,), 2, rngs=nnx.Rngs(0))
        optimizer = jaxreg.nn.Optimizer(model, TX, wrt=nnx.Param, keep_grads=keep)
        with jax.numpy_dtype_promotion("standard"):
            fit(model, optimizer, _mlp_loss, (x, y), key=jax.random.key(0), epochs=2, batch_size=8, progress=False)
        runs.append(nnx.state(model, nnx.Param))
    chex.assert_trees_all_equal(*runs)


def test_keep_grads_must_be_a_bool():
    model = jaxreg.nn.MLP(2, (2,), 2, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="jaxreg.nn.Optimizer: keep_grads must be True or False, got 'yes'"):
        jaxreg.nn.Optimizer(model, TX, wrt=nnx.Param, keep_grads="yes")
