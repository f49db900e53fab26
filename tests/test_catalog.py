"""Cross-cutting properties of every public transform, run over ``tests/catalog.py``.

A vmap over the hyperparameter under jit equals each eager run; derivatives match
finite differences and stay finite where a unit or the whole tree is exactly zero;
float32, float64, bf16, f16 and mixed trees keep their dtypes; complex leaves are
handled by modulus or refused; empty trees and empty selections are the identity; a
schedule is read at the step count; ``mask=`` leaves the other leaves alone; Python
scalar leaves work as in ``optax.apply_updates``; integer leaves are never changed;
``jaxreg.apply_step`` (the one-pass step, where it applies) gives the unfused numbers.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalog import CATALOG, NOT_TRANSFORMS, TESTED_ELSEWHERE, Entry, public_name

import jaxreg

NAMES = sorted(CATALOG)
WITH_HYPER = [n for n in NAMES if CATALOG[n].hyper]
SHAPES = {"w": (4, 3), "b": (3,)}


def tree(seed: int, scale: float = 1.0, dtype=np.float32, shapes=SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


PARAMS, UPDATES = tree(0), tree(1, 0.3)


def run(entry: Entry, h, params, updates, mask=None):
    """The updates of one step of ``entry.make(h, mask)`` from a fresh state."""
    tx = entry.make(h, mask)
    return tx.update(updates, tx.init(params), params)[0]


def new_params(entry: Entry, h, params, updates, mask=None):
    return optax.apply_updates(params, run(entry, h, params, updates, mask))


def assert_trees_close(actual, expected, rtol=1e-6, atol=1e-6):
    chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=atol)


# ---- the catalog is complete -------------------------------------------------------------


def test_catalog_lists_every_public_transform():
    public = set(jaxreg.__all__)
    listed = {public_name(n) for n in CATALOG}
    missing = public - listed - NOT_TRANSFORMS - set(TESTED_ELSEWHERE)
    assert not missing, f"add these public transforms to tests/catalog.py: {sorted(missing)}"
    assert not (listed | NOT_TRANSFORMS | set(TESTED_ELSEWHERE)) - public, "the catalog names a non-public name"
    assert not listed & (NOT_TRANSFORMS | set(TESTED_ELSEWHERE))


# ---- jit, vmap -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_a_vmap_over_the_hyperparameter_match_each_eager_run(name):
    entry = CATALOG[name]
    values = entry.value * np.array([0.25, 1.0, 3.0] if entry.hyper else [1.0], np.float32)
    swept = jax.jit(jax.vmap(lambda h: run(entry, h, PARAMS, UPDATES)))(values)
    for lane, value in enumerate(values):
        eager = run(entry, float(value), PARAMS, UPDATES)
        assert_trees_close({k: v[lane] for k, v in swept.items()}, eager)
        if value == np.float32(entry.value):
            # The test trees are ones the transform changes at entry.value, so every
            # property below has teeth.
            assert any(not np.array_equal(eager[k], UPDATES[k]) for k in SHAPES)


# ---- derivatives ---------------------------------------------------------------------------

WEIGHTS = tree(7)


def objective(entry: Entry, mask=None):
    """``(params, updates, h) -> sum(weights * new params)``, a smooth read-out of one step."""

    def f(params, updates, h):
        out = new_params(entry, h, params, updates, mask)
        return sum(jnp.sum(jnp.asarray(WEIGHTS[k], out[k].dtype) * out[k]) for k in out)

    return f


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_finite_differences(name):
    entry = CATALOG[name]
    with jax.enable_x64(True):
        # Two compilations: the objective and its gradient (an eager grad of a jitted
        # function would compile its forward and backward halves apart).
        f, grad = jax.jit(objective(entry)), jax.jit(jax.grad(objective(entry), argnums=(0, 1, 2)))
        params, updates = tree(0, dtype=np.float64), tree(1, 0.3, dtype=np.float64)
        h = np.float64(entry.value)
        grads = grad(params, updates, h)
        directions = (tree(11, dtype=np.float64), tree(12, dtype=np.float64), np.float64(entry.hyper))
        eps = 1e-6
        for arg, (grad, direction) in enumerate(zip(grads, directions)):
            args = [params, updates, h]
            plus, minus = list(args), list(args)
            plus[arg] = jax.tree.map(lambda x, d: x + eps * d, args[arg], direction)
            minus[arg] = jax.tree.map(lambda x, d: x - eps * d, args[arg], direction)
            numeric = (f(*plus) - f(*minus)) / (2 * eps)
            analytic = sum(np.sum(np.asarray(g) * d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
            np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7, err_msg=f"{name}, argument {arg}")


ZERO_UNIT = {"w": PARAMS["w"].copy(), "b": np.zeros(3, np.float32)}
ZERO_UNIT["w"][:, 1] = 0.0
ZEROS = jax.tree.map(np.zeros_like, PARAMS)


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_are_finite_where_a_unit_is_exactly_zero(name):
    entry = CATALOG[name]
    grad = jax.jit(jax.grad(objective(entry), argnums=(0, 1, 2)))
    for params in (ZERO_UNIT, ZEROS):  # a zero unit and a zero leaf; everything zero
        for g in jax.tree.leaves(grad(params, ZEROS, jnp.float32(entry.value))):
            assert np.all(np.isfinite(np.asarray(g))), name


# ---- dtypes --------------------------------------------------------------------------------

LOW_PRECISION = {"bfloat16": (jnp.bfloat16, 3e-2), "float16": (jnp.float16, 3e-3)}


@pytest.mark.parametrize("dtype", list(LOW_PRECISION))
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_leaves_keep_their_dtype_and_compute_in_float32(name, dtype):
    entry = CATALOG[name]
    dt, tol = LOW_PRECISION[dtype]
    params, updates = (jax.tree.map(lambda x: jnp.asarray(x, dt), t) for t in (PARAMS, UPDATES))
    # The hyperparameter as a traced float32 scalar, as a sweep or a schedule hands it over.
    out = jax.jit(lambda h, p, u: run(entry, h, p, u))(jnp.float32(entry.value), params, updates)
    new = optax.apply_updates(params, out)
    # float32 math on the same (rounded) inputs: the run differs only by its roundings.
    reference = run(
        entry, entry.value, *(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t) for t in (params, updates))
    )
    for k in SHAPES:
        assert out[k].dtype == dt and new[k].dtype == dt, name
        np.testing.assert_allclose(np.asarray(out[k], np.float32), reference[k], rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("name", NAMES)
def test_float64_leaves_compute_in_float64(name):
    entry = CATALOG[name]
    params, updates = tree(0, dtype=np.float64), tree(1, 0.3, dtype=np.float64)
    # The float32 reference runs eagerly outside the x64 context, whose eager operations
    # would all be compiled anew.
    reference = run(entry, entry.value, *(jax.tree.map(lambda x: x.astype(np.float32), t) for t in (params, updates)))
    with jax.enable_x64(True):
        step = jax.jit(lambda p, u: run(entry, entry.value, p, u))
        out = step(params, updates)
        # The float64 step of values with float32 ulps spread 1e-9 apart resolves them;
        # a float32 computation would not.
        moved = step(params, jax.tree.map(lambda x: x * (1 + 1e-9), updates))
        assert all(out[k].dtype == np.float64 for k in SHAPES), name
        assert any(not np.array_equal(out[k], moved[k]) for k in SHAPES), name
        assert_trees_close(out, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_float32_and_float64_trees_work_and_keep_dtypes(name):
    entry = CATALOG[name]
    expected = run(entry, entry.value, PARAMS, UPDATES)  # eager, outside x64 (see above)
    with jax.enable_x64(True):
        params = {"w": PARAMS["w"].astype(np.float64), "b": PARAMS["b"]}
        updates = {"w": UPDATES["w"].astype(np.float64), "b": UPDATES["b"]}
        out = jax.jit(lambda p, u: run(entry, entry.value, p, u))(params, updates)
        assert out["w"].dtype == np.float64 and out["b"].dtype == np.float32, name
        assert_trees_close(out, expected, rtol=1e-5, atol=1e-6)


COMPLEX_PARAMS = {k: (v + 1j * tree(2)[k]).astype(np.complex64) for k, v in PARAMS.items()}
COMPLEX_UPDATES = {k: (v + 1j * tree(3, 0.3)[k]).astype(np.complex64) for k, v in UPDATES.items()}
LINEAR = {"coupled_weight_decay", "decoupled_weight_decay", "decoupled_weight_decay learning_rate"}


def _by_modulus(entry: Entry):
    """What a transform that rescales values by norms of their moduli does to complex
    values: ``z * T(|z|) / |z|``, with ``T`` run on the real moduli."""
    if entry.parameter_space:
        w = jax.tree.map(lambda p, u: p + u, COMPLEX_PARAMS, COMPLEX_UPDATES)
        moduli = jax.tree.map(np.abs, w)
        projected = new_params(entry, entry.value, moduli, jax.tree.map(np.zeros_like, moduli))
        return {k: w[k] * (np.asarray(projected[k]) / moduli[k]) - COMPLEX_PARAMS[k] for k in w}
    moduli = jax.tree.map(np.abs, COMPLEX_UPDATES)
    clipped = run(entry, entry.value, moduli, moduli)
    return {k: COMPLEX_UPDATES[k] * (np.asarray(clipped[k]) / moduli[k]) for k in moduli}


def _by_parts(entry: Entry):
    """What a linear transform does to complex values: its action on the real and imaginary parts."""
    re = run(entry, entry.value, *(jax.tree.map(np.real, t) for t in (COMPLEX_PARAMS, COMPLEX_UPDATES)))
    im = run(entry, entry.value, *(jax.tree.map(np.imag, t) for t in (COMPLEX_PARAMS, COMPLEX_UPDATES)))
    return {k: np.asarray(re[k]) + 1j * np.asarray(im[k]) for k in re}


@pytest.mark.parametrize("name", NAMES)
def test_complex_leaves_are_handled_by_modulus_or_refused(name):
    entry = CATALOG[name]
    tx = entry.make(entry.value, None)
    if not entry.complex_values:
        with pytest.raises(TypeError, match=rf"{public_name(name)}: params\['b'\] is complex64, but .* real values"):
            tx.init(COMPLEX_PARAMS)
        return
    out = run(entry, entry.value, COMPLEX_PARAMS, COMPLEX_UPDATES)
    expected = _by_parts(entry) if name in LINEAR else _by_modulus(entry)
    for k in SHAPES:
        assert out[k].dtype == np.complex64
        np.testing.assert_allclose(np.asarray(out[k]), expected[k], rtol=2e-5, atol=2e-6, err_msg=name)


# ---- empty trees and selections, schedules, masks ----------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_empty_tree_and_empty_selection_are_the_identity(name):
    entry = CATALOG[name]
    assert run(entry, entry.value, {}, {}) == {}
    nothing = {k: False for k in SHAPES}
    out = jax.jit(lambda p, u: run(entry, entry.value, p, u, nothing))(PARAMS, UPDATES)
    for k in SHAPES:
        np.testing.assert_array_equal(out[k], UPDATES[k])


@pytest.mark.parametrize("name", WITH_HYPER)
def test_a_schedule_is_read_at_the_step_count(name):
    entry = CATALOG[name]
    constant = run(entry, lambda count: jnp.float32(entry.value), PARAMS, UPDATES)
    assert_trees_close(constant, run(entry, entry.value, PARAMS, UPDATES))
    tx = entry.make(lambda count: entry.value * (1.0 + count.astype(jnp.float32)), None)
    state = tx.init(PARAMS)
    _, state = tx.update(UPDATES, state, PARAMS)
    second, _ = jax.jit(tx.update)(UPDATES, state, PARAMS)
    if entry.stepwise:  # the second step of the constant 2 * value, from the same key and count
        fixed = entry.make(2 * entry.value, None)
        _, fixed_state = fixed.update(UPDATES, fixed.init(PARAMS), PARAMS)
        assert_trees_close(second, fixed.update(UPDATES, fixed_state, PARAMS)[0])
        return
    assert_trees_close(second, run(entry, 2 * entry.value, PARAMS, UPDATES))


@pytest.mark.parametrize("name", NAMES)
def test_mask_acts_on_the_selected_leaves_only(name):
    entry = CATALOG[name]
    for mask in ({"w": True, "b": False}, lambda tree: {"w": True, "b": False}):
        out = run(entry, entry.value, PARAMS, UPDATES, mask)
        np.testing.assert_array_equal(out["b"], UPDATES["b"])
        # The selected leaves see the transform as if the others were not there (a global
        # norm runs over the selected leaves only).
        alone = run(entry, entry.value, {"w": PARAMS["w"]}, {"w": UPDATES["w"]})
        np.testing.assert_allclose(out["w"], alone["w"], rtol=1e-6, atol=1e-7)


# ---- Python scalars and integer leaves ---------------------------------------------------------

SCALAR_PARAMS, SCALAR_UPDATES = (-1.0, {"k": 1.0}), (0.5, {"k": -3.0})


@pytest.mark.parametrize("name", NAMES)
def test_python_scalar_leaves_work_as_arrays_do(name):
    entry = CATALOG[name]
    tx = entry.make(entry.value, None)
    if entry.units:  # a scalar has no axis to cut into units: a clear error
        with pytest.raises(ValueError, match=rf"{public_name(name)}: axis -1 is out of range for params\[0\]"):
            tx.init(SCALAR_PARAMS)
        return
    out = optax.apply_updates(SCALAR_PARAMS, run(entry, entry.value, SCALAR_PARAMS, SCALAR_UPDATES))
    as_arrays = jax.tree.map(jnp.float32, (SCALAR_PARAMS, SCALAR_UPDATES))
    expected = optax.apply_updates(as_arrays[0], run(entry, entry.value, *as_arrays))
    assert_trees_close(out, expected)


@pytest.mark.parametrize("name", NAMES)
def test_integer_leaves_are_never_changed(name):
    entry = CATALOG[name]
    params = {**PARAMS, "n": np.asarray(5, np.int32), "steps": np.arange(3, dtype=np.int32)}
    expected = run(entry, entry.value, PARAMS, UPDATES)
    for dtype in (np.int32, jax.dtypes.float0):  # the update of an int, or the gradient jax.grad gives it
        ints = {"n": np.zeros((), dtype), "steps": np.zeros(3, dtype)}
        out = run(entry, entry.value, params, {**UPDATES, **ints})
        for k in ints:
            assert out[k].dtype == dtype and np.array_equal(out[k], ints[k])
        assert_trees_close({k: out[k] for k in SHAPES}, expected)


# ---- the one-pass step ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["plain", "mask", "schedule"])
@pytest.mark.parametrize("name", NAMES)
def test_apply_step_equals_the_unfused_step(name, variant):
    entry = CATALOG[name]
    h = (lambda count: jnp.float32(entry.value)) if variant == "schedule" and entry.hyper else entry.value
    tx = entry.make(h, {"w": True, "b": False} if variant == "mask" else None)
    members = (jaxreg.sgd(0.1), tx) if entry.parameter_space else (tx, jaxreg.sgd(0.1))
    chain = jaxreg.chain(*members)
    params, grads = jax.tree.map(jnp.asarray, PARAMS), jax.tree.map(jnp.asarray, UPDATES)
    state = chain.init(params)
    fused, fused_state = jaxreg.apply_step(chain, grads, state, params)
    updates, unfused_state = chain.update(grads, state, params)
    assert_trees_close(fused, optax.apply_updates(params, updates))
    assert_trees_close(fused_state, unfused_state)
