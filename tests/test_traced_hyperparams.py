"""Every hyperparameter is traceable: a sweep over 8 values is one vmap inside one jit.

For each transform and each of its hyperparameters, a 25-step training run on a small
regression problem is vmapped over 8 values, and each lane must equal the run made with
that value as a plain Python float.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalog import CATALOG, public_name

import jaxreg

STEPS = 25
LR = 0.05

# name -> (factory of the regularizer from one hyperparameter value, 8 values)
SWEEPS = {
    "clip.max_delta": (lambda h: jaxreg.clip(h), np.linspace(0.01, 0.5, 8)),
    "clip_by_global_norm.max_norm": (lambda h: jaxreg.clip_by_global_norm(h), np.linspace(0.1, 3.0, 8)),
    "clip_by_leaf_norm.max_norm": (lambda h: jaxreg.clip_by_leaf_norm(h, eps=1e-6), np.linspace(0.1, 3.0, 8)),
    "coupled_weight_decay.rate": (lambda h: jaxreg.coupled_weight_decay(h), np.linspace(0.0, 0.5, 8)),
    "decoupled_weight_decay.rate": (
        lambda h: jaxreg.decoupled_weight_decay(h, learning_rate=LR),
        np.linspace(0.0, 2.0, 8),
    ),
    "decoupled_weight_decay.learning_rate": (
        lambda h: jaxreg.decoupled_weight_decay(0.5, learning_rate=h),
        np.linspace(0.01, 0.2, 8),
    ),
    "l1_prox.strength": (lambda h: jaxreg.l1_prox(h, learning_rate=LR), np.linspace(0.0, 0.5, 8)),
    "l1_prox.learning_rate": (lambda h: jaxreg.l1_prox(0.3, learning_rate=h), np.linspace(0.01, 0.2, 8)),
    "elastic_net_prox.l1": (lambda h: jaxreg.elastic_net_prox(h, 0.1, learning_rate=LR), np.linspace(0.0, 0.5, 8)),
    "elastic_net_prox.l2": (lambda h: jaxreg.elastic_net_prox(0.1, h, learning_rate=LR), np.linspace(0.0, 2.0, 8)),
    "group_lasso_prox.strength": (
        lambda h: jaxreg.group_lasso_prox(h, learning_rate=LR, mask=jaxreg.masks.weights_only),
        np.linspace(0.0, 1.0, 8),
    ),
    "project_box.upper": (lambda h: jaxreg.project_box(-0.5, h), np.linspace(0.05, 1.0, 8)),
    "project_box.lower": (lambda h: jaxreg.project_box(h, 0.5), np.linspace(-1.0, -0.05, 8)),
    "project_l2_ball.radius": (lambda h: jaxreg.project_l2_ball(h), np.linspace(0.2, 2.0, 8)),
    "project_l2_ball.radius.leaf": (lambda h: jaxreg.project_l2_ball(h, scope="leaf"), np.linspace(0.2, 2.0, 8)),
    "project_l1_ball.radius": (lambda h: jaxreg.project_l1_ball(h), np.linspace(0.2, 3.0, 8)),
    "max_norm.max_value": (lambda h: jaxreg.max_norm(h, mask=jaxreg.masks.weights_only), np.linspace(0.1, 1.0, 8)),
    "clip_by_block_rms.threshold": (lambda h: jaxreg.clip_by_block_rms(h), np.linspace(0.05, 2.0, 8)),
    "adaptive_grad_clip.clipping": (lambda h: jaxreg.adaptive_grad_clip(h), np.linspace(0.01, 1.0, 8)),
    "add_gradient_noise.eta": (lambda h: jaxreg.add_gradient_noise(h, seed=1), np.linspace(0.0, 0.1, 8)),
    "project_simplex.scale": (lambda h: jaxreg.project_simplex(h), np.linspace(0.5, 3.0, 8)),
    "project_l1_sphere.radius": (lambda h: jaxreg.project_l1_sphere(h), np.linspace(0.5, 3.0, 8)),
    "project_l2_sphere.radius": (lambda h: jaxreg.project_l2_sphere(h), np.linspace(0.5, 3.0, 8)),
    "project_linf_ball.radius": (lambda h: jaxreg.project_linf_ball(h), np.linspace(0.05, 1.0, 8)),
    "project_halfspace.b": (lambda h: jaxreg.project_halfspace(1.0, h), np.linspace(-1.0, 1.0, 8)),
    "project_hyperplane.b": (lambda h: jaxreg.project_hyperplane(1.0, h), np.linspace(-1.0, 1.0, 8)),
    "min_max_norm.min_value": (
        lambda h: jaxreg.min_max_norm(h, 2.0, mask=jaxreg.masks.weights_only),
        np.linspace(0.0, 1.0, 8),
    ),
    "min_max_norm.rate": (
        lambda h: jaxreg.min_max_norm(0.5, 0.8, rate=h, mask=jaxreg.masks.weights_only),
        np.linspace(0.0, 1.0, 8),
    ),
}


def _problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    w_true = rng.standard_normal((6, 2)).astype(np.float32)
    y = (x @ w_true).astype(np.float32)
    params = {"w": jnp.zeros((6, 2), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
    return jnp.asarray(x), jnp.asarray(y), params


def _train(make, h):
    x, y, params = _problem()
    tx = make(h)
    # Parameter-space pieces go after the optimizer, gradient-space ones before it.
    probe = tx.init(params)
    chain = optax.chain(optax.sgd(LR), tx) if _is_parameter_space(probe) else optax.chain(tx, optax.sgd(LR))
    state = chain.init(params)

    def step(carry, _):
        p, s = carry
        g = jax.grad(lambda q: jnp.mean((x @ q["w"] + q["b"] - y) ** 2))(p)
        u, s = chain.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, state), length=STEPS)
    return params


def _is_parameter_space(state):
    leaves = jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, jaxreg.StepCountState))
    return any(isinstance(s, jaxreg.StepCountState) for s in leaves)


def test_every_transform_with_a_hyperparameter_is_swept():
    swept = {name.split(".")[0] for name in SWEEPS}
    assert swept == {public_name(name) for name, entry in CATALOG.items() if entry.hyper}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_vmap_over_hyperparameter_matches_each_run(name):
    make, values = SWEEPS[name]
    swept = jax.jit(jax.vmap(lambda h: _train(make, h)))(jnp.asarray(values, jnp.float32))
    # The runs with each value as a plain Python float, compiled as one program (eight
    # separate scans would compile eight times).
    singles = jax.jit(lambda: [_train(make, float(value)) for value in values])()
    for lane, (value, single) in enumerate(zip(values, singles)):
        for key in single:
            np.testing.assert_allclose(
                swept[key][lane], single[key], rtol=2e-5, atol=2e-6, err_msg=f"{name}={value} {key}"
            )
    # The sweep really changes the outcome, so the test would catch an ignored value.
    assert not np.allclose(swept["w"][0], swept["w"][-1])


def test_schedule_hyperparameters_follow_step_count():
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    tx = jaxreg.l1_prox(schedule, learning_rate=1.0)
    params = {"w": jnp.full((3,), 10.0, jnp.float32)}
    state = tx.init(params)
    zero = {"w": jnp.zeros((3,), jnp.float32)}
    shrinks = []
    for _ in range(4):
        u, state = jax.jit(tx.update)(zero, state, params)
        shrinks.append(float(-u["w"][0]))
    np.testing.assert_allclose(shrinks, [0.0, 0.25, 0.5, 0.75], rtol=1e-6)
