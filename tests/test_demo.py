"""The demo (first source article): the loss falls and the box holds."""

import jax
import numpy as np

from jaxreg import demo


def test_demo_fit_recovers_line_and_box_binds():
    x, y = demo.make_data(jax.random.key(0))
    params, history = demo.fit(x, y, box=5.0, clip_value=1.0, lam=0.01)
    history = np.asarray(history)
    assert history[-1] < 0.1 * history[0]
    assert abs(float(params["w"]) - 3.0) < 0.2 and abs(float(params["b"]) - 2.0) < 0.2
    tight, _ = demo.fit(x, y, box=2.5, clip_value=1.0, lam=0.01)
    assert float(tight["w"]) == 2.5


def test_demo_main_prints_loss(capsys):
    demo.main()
    out = capsys.readouterr().out
    assert "mse" in out and "fit: y =" in out
