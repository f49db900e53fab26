"""The one-pass step never crashes the process, never loads a library it did not build,
and works through JAX's transformations with the unfused chain's numbers.

Cases that crashed the process before the checks existed run in a subprocess, so that a
regression fails one test instead of killing the suite.
"""

import os
import stat
import subprocess
import sys
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from isolated import REPO, run_python

import jaxreg
from jaxreg import _native, _rules, fused
from jaxreg._native import cache, codegen

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"no native kernels: {_native.why_unavailable()}")


@pytest.fixture(autouse=True)
def _standard_promotion():
    # optax mixes Python floats with int32 step counts, which strict promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        yield


def _unfused_step(tx, grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_arguments_that_do_not_fit_raise_instead_of_crashing():
    # Before the checks: a larger gradient segfaulted, a smaller state aborted with
    # free(): invalid size, a larger or transposed state was accepted.
    result = run_python(
        """
        import jax, jax.numpy as jnp, jaxreg
        tx = jaxreg.chain(jaxreg.clip_by_global_norm(1.0), jaxreg.adam(1e-3))
        params = {"w": jnp.ones((4, 3))}
        cases = {
            "larger grads": ({"w": jnp.ones(100_000)}, tx.init(params)),
            "smaller state": ({"w": jnp.ones((4, 3))}, tx.init({"w": jnp.ones(2)})),
            "larger state": ({"w": jnp.ones((4, 3))}, tx.init({"w": jnp.ones((40, 3))})),
            "transposed state": ({"w": jnp.ones((4, 3))}, tx.init({"w": jnp.ones((3, 4))})),
            "state of more leaves": ({"w": jnp.ones((4, 3))}, tx.init({"w": jnp.ones((4, 3)), "b": jnp.ones(3)})),
        }
        step = jax.jit(jaxreg.apply_step, static_argnums=0)
        for name, (grads, state) in cases.items():
            try:
                step(tx, grads, state, params)
                print(name, "ran")
            except ValueError as error:
                print(name, "ValueError", "params['w']" in str(error) or "holds" in str(error))
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5
    assert all(line.endswith("ValueError True") for line in lines), lines


def test_custom_calls_whose_lanes_do_not_fit_raise_instead_of_crashing():
    # Under vmap the calls take the number of lanes from their results; every operand
    # must then hold that many blocks of its leaf, or the call refuses to run.
    result = run_python(
        """
        import re
        import jax, jax.numpy as jnp, numpy as np, jaxreg
        jax.config.update("jax_numpy_dtype_promotion", "standard")
        tx = jaxreg.chain(jaxreg.sgd(0.1))
        p = {"w": jnp.ones(6)}
        text = jax.jit(lambda p, s: jaxreg.apply_step(tx, p, s, p)).lower(p, tx.init(p)).as_text()
        kernel = re.search(r'kernel = "([0-9a-f]+)"', text).group(1)
        one = dict(kernel=kernel, variants=np.zeros(1, np.int64), n_slots=np.int64(0), n_inputs=np.int64(0),
                   n_counters=np.int64(0), n_leaf_scalars=np.int64(0), stages=np.zeros(1, np.int64),
                   units=np.ones(1, np.int64), inner=np.ones(1, np.int64), joint=np.zeros(0, np.int64))

        def step(totals, table, g, w):
            results = [jax.ShapeDtypeStruct((w,), jnp.float32), jax.ShapeDtypeStruct((totals,), jnp.float32)]
            call = jax.ffi.ffi_call("jaxreg_step", results, input_output_aliases={3: 0})
            return call(jnp.ones(table), jnp.zeros(table), jnp.ones(g), jnp.ones(w), **one)

        def sumsq(result, *leaves):
            call = jax.ffi.ffi_call("jaxreg_sumsq", jax.ShapeDtypeStruct((result,), jnp.float32))
            return call(*[jnp.arange(n, dtype=jnp.float32) for n in leaves])

        cases = {
            "leaf not a whole number of lanes": lambda: step(2, 2, 7, 7),
            "gradient of other lanes": lambda: step(2, 2, 12, 6),
            "scalars of other lanes": lambda: step(3, 2, 6, 6),
            "no counters row": lambda: step(0, 1, 6, 6),
            "sums not a whole number of lanes": lambda: sumsq(5, 6),
            "leaf not a whole number of sums lanes": lambda: sumsq(6, 7),
            "sums of no leaves": lambda: sumsq(2),
        }
        for name, call in cases.items():
            try:
                jax.block_until_ready(jax.jit(call)())
                print(name, "ran")
            except Exception as error:
                print(name, type(error).__name__, "jaxreg_s" in str(error))
        print("lanes", np.asarray(sumsq(8, 4, 2), np.float64).round(3).tolist())
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 8, lines
    assert all(line.endswith("True") and " ran" not in line for line in lines[:-1]), lines
    # Two lanes of the leaves [0, 1, 2, 3] and [0, 1]: lane 0 holds [0, 1] and [0], lane 1
    # [2, 3] and [1]; each lane's row is its sums of squares, then its norms.
    assert lines[-1] == "lanes [1.0, 0.0, 1.0, 0.0, 13.0, 1.0, 3.606, 1.0]", lines[-1]


def test_a_broadcastable_gradient_gets_the_unfused_numbers():
    tx = jaxreg.chain(jaxreg.clip_by_global_norm(1.0), jaxreg.adam(1e-2))
    params, grads = {"w": jnp.arange(4.0)}, {"w": jnp.full((1,), 0.5)}
    assert "broadcasts" in fused.fast_path(tx, grads, params)
    got = jaxreg.apply_step(tx, grads, tx.init(params), params)
    want = _unfused_step(tx, grads, tx.init(params), params)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_state_in_another_dtype_takes_the_unfused_step_with_a_reason(dtype):
    tx = jaxreg.chain(jaxreg.adam(1e-2))
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    state = jax.tree.map(lambda x: x.astype(dtype) if x.dtype == jnp.float32 else x, tx.init(params))
    reason = fused.fast_path(tx, params, params, state)
    assert "the state of member 0 of the chain at params['w'] is" in reason and "float32" in reason
    got = jax.jit(jaxreg.apply_step, static_argnums=0)(tx, params, state, params)
    want = _unfused_step(tx, params, state, params)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_a_chain_beyond_the_kernels_limits_falls_back_with_a_reason():
    tx = jaxreg.chain(*[jaxreg.sgd(1e-2, momentum=0.5) for _ in range(_native.MAX_SLOTS + 1)])
    params = {"w": jnp.ones(5)}
    assert f"at most {_native.MAX_SLOTS}" in fused.fast_path(tx, params, params)
    got = jax.jit(jaxreg.apply_step, static_argnums=0)(tx, params, tx.init(params), params)
    chex.assert_trees_all_close(got, _unfused_step(tx, params, tx.init(params), params), rtol=1e-6, atol=1e-7)


def test_many_leaves_are_split_between_calls_with_the_unfused_numbers():
    # 200 leaves with two slots each: three outputs per leaf, several custom calls; the
    # value clip's counters are added across the calls.
    rng = np.random.default_rng(0)
    params = {f"p{i:03d}": jnp.asarray(rng.standard_normal(3 + i % 7), jnp.float32) for i in range(200)}
    grads = jax.tree.map(lambda x: 0.3 * x + 0.1, params)
    tx = jaxreg.chain(jaxreg.clip(0.2), jaxreg.adam(1e-2), jaxreg.l1_prox(0.1, learning_rate=1e-2))
    assert len(fused._plan.plan_for(tx, grads, tx.init(params), params).calls) > 1
    got = jax.jit(jaxreg.apply_step, static_argnums=0)(tx, grads, tx.init(params), params)
    want = jax.jit(_unfused_step, static_argnums=0)(tx, grads, tx.init(params), params)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("first", ["global", "leaf"])
def test_vmap_over_lanes_of_params_matches_the_unfused_chain(first):
    clip = jaxreg.clip_by_global_norm(0.5) if first == "global" else jaxreg.clip_by_leaf_norm(0.5)
    tx = jaxreg.chain(clip, jaxreg.adam(1e-2), jaxreg.decoupled_weight_decay(0.1, learning_rate=1e-2))
    rng = np.random.default_rng(1)
    lanes = {
        "w": jnp.asarray(rng.standard_normal((4, 3, 5)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal((4, 5)), jnp.float32),
    }
    grads = jax.tree.map(lambda x: 2.0 * x, lanes)

    def run(step):
        return jax.jit(jax.vmap(lambda g, p: step(tx, g, tx.init(p), p)))(grads, lanes)

    chex.assert_trees_all_close(run(jaxreg.apply_step), run(_unfused_step), rtol=1e-6, atol=1e-7)


def test_grad_and_jvp_through_apply_step_are_the_unfused_chains():
    tx = jaxreg.chain(jaxreg.clip_by_global_norm(1.0), jaxreg.adam(1e-2), jaxreg.l1_prox(0.05, learning_rate=1e-2))
    params = {"w": jnp.linspace(-1.0, 1.0, 8), "b": jnp.asarray([0.3, -0.2])}

    def loss(step, scale):
        grads = jax.tree.map(lambda x: scale * x, params)
        new, _ = step(tx, grads, tx.init(params), params)
        return sum(jnp.sum(x**2) for x in jax.tree.leaves(new))

    for scale in (0.3, 3.0):
        got = jax.grad(lambda s: loss(jaxreg.apply_step, s))(scale)
        want = jax.grad(lambda s: loss(_unfused_step, s))(scale)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    tangent_got = jax.jvp(lambda s: loss(jaxreg.apply_step, s), (1.0,), (1.0,))
    tangent_want = jax.jvp(lambda s: loss(_unfused_step, s), (1.0,), (1.0,))
    np.testing.assert_allclose(tangent_got, tangent_want, rtol=1e-5)


def test_unit_sums_are_as_precise_as_the_global_norm():
    # 300000 units of one element each summed in float used to land at 100.00042.
    tx = jaxreg.chain(jaxreg.max_norm(100.0, axis=-1))
    w = jnp.asarray(np.random.default_rng(2).standard_normal((300_000, 1)), jnp.float32)
    params, grads = {"w": w}, {"w": jnp.zeros_like(w)}
    got, _ = jax.jit(jaxreg.apply_step, static_argnums=0)(tx, grads, tx.init(params), params)
    want, _ = jax.jit(_unfused_step, static_argnums=0)(tx, grads, tx.init(params), params)
    norm = float(np.sqrt(np.sum(np.asarray(got["w"], np.float64) ** 2)))
    assert norm <= 100.0 * (1 + 1e-6)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape, axis", [((3, 70_000), -1), ((70_001, 3), 0), ((5, 40_000, 2), 1), ((2, 3, 50_000), 1)])
def test_long_rows_and_units_match_the_unfused_chain(shape, axis):
    # Rows longer than a chunk are cut into column groups; the sums still come out whole.
    tx = jaxreg.chain(jaxreg.sgd(0.1), jaxreg.max_norm(0.5, axis=axis), jaxreg.l1_prox(0.01))
    w = jnp.asarray(np.random.default_rng(3).standard_normal(shape), jnp.float32)
    params, grads = {"w": w}, {"w": 0.5 * w}
    assert fused.fast_path(tx, grads, params) is None
    got = jax.jit(jaxreg.apply_step, static_argnums=0)(tx, grads, tx.init(params), params)
    want = jax.jit(_unfused_step, static_argnums=0)(tx, grads, tx.init(params), params)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_a_one_element_leaf_with_a_huge_gradient_gets_the_unfused_norm():
    tx = jaxreg.chain(jaxreg.clip_by_global_norm(1.0), jaxreg.sgd(0.1))
    params, grads = {"w": jnp.ones(1)}, {"w": jnp.full((1,), 1e20)}
    got = jax.jit(jaxreg.apply_step, static_argnums=0)(tx, grads, tx.init(params), params)
    want = jax.jit(_unfused_step, static_argnums=0)(tx, grads, tx.init(params), params)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
    assert float(got[1][0].norm) == float(want[1][0].norm)  # inf: the squares overflow float32, as in torch


# The kernel cache.

SOURCE = 'extern "C" int jaxreg_test_answer() { return 42; }\n'


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    home = tmp_path / "cache"
    monkeypatch.setenv("JAXREG_CACHE_DIR", str(home))
    monkeypatch.setattr(cache, "_FAILED", {})
    cache._checked_dir.cache_clear()
    yield home
    cache._checked_dir.cache_clear()


def test_a_cache_directory_others_can_write_is_not_used(cache_home):
    (cache_home / "native").mkdir(parents=True)
    (cache_home / "native").chmod(0o777)
    with pytest.warns(RuntimeWarning, match="writable by group or others"):
        built = cache.build(SOURCE, "answer")
    assert built.parent != cache_home / "native"
    assert stat.S_IMODE(built.parent.stat().st_mode) == 0o700


def test_a_library_without_its_record_is_rebuilt_not_loaded(cache_home):
    built = cache.build(SOURCE, "answer")
    planted = b"\x7fELF not what jaxreg built"
    built.write_bytes(planted)
    again = cache.build(SOURCE, "answer")
    assert again == built and again.read_bytes() != planted
    import ctypes

    assert ctypes.CDLL(str(again)).jaxreg_test_answer() == 42


def test_a_truncated_cached_library_is_rebuilt_in_a_new_process(tmp_path):
    # Loading a truncated library used to kill every later process with SIGBUS.
    env = {"JAXREG_CACHE_DIR": str(tmp_path)}
    step = """
        import jax, jax.numpy as jnp, jaxreg
        tx = jaxreg.chain(jaxreg.adam(1e-2))
        p = {"w": jnp.ones(3)}
        print(jaxreg.apply_step(tx, p, tx.init(p), p)[0]["w"][0])
    """
    first = run_python(step, **env)
    assert first.returncode == 0, first.stderr[-2000:]
    for library in (tmp_path / "native").glob("*.so"):
        library.write_bytes(library.read_bytes()[:4096])
    second = run_python(step, **env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout == first.stdout


def test_a_library_without_the_expected_symbols_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(_native, "_LIBRARIES", {})
    monkeypatch.setattr(_native, "_BROKEN", {})
    real = codegen.kernel_source

    def renamed(*args):
        source, names = real(*args)
        return source, [name + "_missing" for name in names]

    monkeypatch.setattr(codegen, "kernel_source", renamed)
    tx = jaxreg.chain(jaxreg.adam(1e-2), jaxreg.project_box(-0.7, 0.7))
    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    assert "lacks the symbols" in fused.fast_path(tx, params, params)
    monkeypatch.setattr(_native, "_BROKEN", {})
    with pytest.warns(RuntimeWarning, match="lacks the symbols"):
        got = jaxreg.apply_step(tx, params, tx.init(params), params)
    chex.assert_trees_all_close(got, _unfused_step(tx, params, tx.init(params), params), rtol=1e-6, atol=1e-7)


@pytest.fixture
def fake_compiler(tmp_path):
    """A compiler that logs each run and fails (or sleeps, with mode 'slow')."""
    log = tmp_path / "runs.log"

    def make(mode: str) -> str:
        script = tmp_path / f"cxx-{mode}"
        action = "sleep 30" if mode == "slow" else "echo 'error: no' >&2; exit 1"
        script.write_text(
            f'#!/bin/sh\nif [ "$1" = --version ]; then echo fake {mode}; exit 0; fi\necho run >> {log}\n{action}\n'
        )
        script.chmod(0o755)
        return str(script)

    return make, log


def test_a_failing_compiler_runs_once_and_leaves_no_build_directory(cache_home, fake_compiler, monkeypatch):
    make, log = fake_compiler
    monkeypatch.setenv("CXX", make("failing"))
    for _ in range(3):
        with pytest.raises(cache.BuildError, match="error: no"):
            cache.build(SOURCE, "answer")
    assert log.read_text().count("run") == 1
    assert not list((cache_home / "native").glob("build-*"))


def test_a_compiler_that_hangs_is_stopped(cache_home, fake_compiler, monkeypatch):
    make, _ = fake_compiler
    monkeypatch.setenv("CXX", make("slow"))
    monkeypatch.setenv("JAXREG_CXX_TIMEOUT", "1")
    with pytest.raises(cache.BuildError, match="did not finish in 1 s"):
        cache.build(SOURCE, "answer")
    assert not list((cache_home / "native").glob("build-*"))


def test_a_compiler_command_with_a_launcher_works(cache_home, monkeypatch):
    # CXX="ccache g++" is split as a shell would split it; `env` stands in for ccache.
    monkeypatch.setenv("CXX", f"env {cache.compiler()[0]}")
    assert cache.compiler()[0] == "env"
    built = cache.build(SOURCE, "answer")
    assert cache._verified(built)


def test_two_processes_build_one_library_once(tmp_path):
    log = tmp_path / "runs.log"
    wrapper = tmp_path / "cxx"
    real = cache.compiler()[0]
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = --version ] || echo run >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "JAXREG_CACHE_DIR": str(tmp_path / "home"), "CXX": str(wrapper)}
    code = f"from jaxreg._native import cache; print(cache.build({SOURCE!r}, 'answer'))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    assert log.read_text().count("run") == 1


def test_the_test_suite_turns_the_fallback_warning_into_an_error():
    # A rule whose kernel does not build must fail the tests, not pass on unfused numbers.
    filters = [f for f in warnings.filters if f[0] == "error" and f[2] is RuntimeWarning]
    assert any(
        f[1] is not None and f[1].match("jaxreg.apply_step: this chain's kernel could not be built") for f in filters
    )


# The rules' contract.


def _rule(code, **fields):
    return _rules.Rule(code=code, scalars=lambda state, norm: [], advance=lambda state, slots, norm: state, **fields)


@pytest.mark.parametrize(
    "code, fields, message",
    [
        ("{ const float t = u + @s0 * @m1[i]; @m1[i] = t; u = t; }", {}, "names @m1 but not @m0"),
        ("u = u * @x0;", {}, "names @x0, which is not one of"),
        ("u = u * @m0;", {}, "wrong form"),
        ("u = @k0 ? u : 0.0f;", {}, "wrong form"),
        ("@c0 += u > 1.0f;", {}, "needs record="),
        ("u = u * @s0;", {"factor": "f = @m0[i];"}, "factor names @m0"),
        ("u = u * @s0;", {"factor": "g = ss;"}, "factor must set f"),
    ],
)
def test_a_rule_that_names_what_it_does_not_own_is_refused_when_made(code, fields, message):
    with pytest.raises(ValueError, match=message):
        _rule(code, **fields)


def test_a_rule_whose_state_gives_other_slots_than_it_names_is_refused():
    # sgd's rule with its slot renamed used to compile behind another momentum SGD and
    # write into that member's state.
    sgd = jaxreg.sgd(0.1, momentum=0.9)
    two_slots = _rules.Rule(
        code="{ const float t = u + @s1 * @m0[i]; @m0[i] = t; @m1[i] = t; u = t * @s0; }",
        scalars=sgd.rule.scalars,
        advance=sgd.rule.advance,
        slots=sgd.rule.slots,
    )
    tx = jaxreg.chain(jaxreg.sgd(0.1, momentum=0.5), _rules.describe(sgd, two_slots))
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"member 1's rule names 2 state slots \(@m0, ...\) but gives 1"):
        jaxreg.apply_step(tx, params, tx.init(params), params)
