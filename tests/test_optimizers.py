"""jaxreg.adam and jaxreg.sgd: optax's optimizers, with torch.optim's argument checks."""

import math

import jax
import jax.numpy as jnp
import optax
import pytest
import torch

import jaxreg


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: jaxreg.adam(-0.1), "adam: learning_rate must be a non-negative number, got -0.1"),
        (lambda: jaxreg.adam(math.nan), "adam: learning_rate must be a non-negative number, got nan"),
        (lambda: jaxreg.adam(1e-3, b1=1.0), r"adam: b1 must lie in \[0, 1\), got 1.0"),
        (lambda: jaxreg.adam(1e-3, b2=-0.5), "adam: b2 must be a non-negative number, got -0.5"),
        (lambda: jaxreg.adam(1e-3, eps=-1e-8), "adam: eps must be a non-negative number, got -1e-08"),
        (lambda: jaxreg.adam(1e-3, eps_root=math.nan), "adam: eps_root must be a non-negative number"),
        (lambda: jaxreg.sgd(-1.0), "sgd: learning_rate must be a non-negative number, got -1.0"),
        (lambda: jaxreg.sgd(0.1, momentum=1.5), r"sgd: momentum must lie in \[0, 1\], got 1.5"),
        (lambda: jaxreg.sgd(0.1, momentum=-0.1), "sgd: momentum must be a non-negative number, got -0.1"),
        (lambda: jaxreg.sgd(0.1, nesterov=True), "sgd: nesterov=True needs a momentum"),
    ],
)
def test_arguments_torch_refuses_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make", [lambda: jaxreg.adam("0.1"), lambda: jaxreg.sgd(0.1, momentum="0.9")])
def test_a_string_is_named(make):
    with pytest.raises(TypeError, match="must be a real number, an array of them or a schedule, got '0.*' of type str"):
        make()


def test_torch_refuses_the_same_arguments():
    # The negative control: these are torch.optim's own refusals.
    params = [torch.nn.Parameter(torch.ones(2))]
    for make in (
        lambda: torch.optim.Adam(params, lr=-0.1),
        lambda: torch.optim.Adam(params, betas=(1.0, 0.999)),
        lambda: torch.optim.Adam(params, eps=-1e-8),
        lambda: torch.optim.SGD(params, lr=-1.0),
    ):
        with pytest.raises(ValueError):
            make()


def test_the_boundaries_torch_accepts_are_accepted():
    # A rate of 0 (a frozen step), b1 = 0, momentum 0 and 1, a schedule and a traced rate.
    for tx in (
        jaxreg.adam(0.0, b1=0.0),
        jaxreg.sgd(0.0, momentum=0.0),
        jaxreg.sgd(0.1, momentum=1.0),
        jaxreg.adam(optax.linear_schedule(1e-3, 0.0, 10)),
    ):
        params = {"w": jnp.ones(3)}
        with jax.numpy_dtype_promotion("standard"):
            tx.update(params, tx.init(params), params)
    grads = {"w": jnp.ones(2)}
    with jax.numpy_dtype_promotion("standard"):
        jax.jit(lambda lr: jaxreg.adam(lr).update(grads, jaxreg.adam(lr).init(grads))[0])(1e-3)
