"""FedProx: the client's proximal term has the exact value and gradient of (mu/2)||w - w0||²."""

import pytest
import torch

from fedfm.client.hooks import FitContext
from fedfm.client.state import InMemoryStore
from fedfm.messages import FitTask
from fedfm.strategies.fedprox import ProximalTerm


@pytest.mark.parametrize("mu", [0.01, 2.5])
def test_proximal_term_value_and_gradient_are_exact(mu):
    # Prepare: the anchor w0 and parameters moved away from it by d
    w0 = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5]])}
    d = {"a": torch.tensor([0.3, 0.4]), "b": torch.tensor([[-1.0]])}
    ctx = FitContext(FitTask(0, 1), w0, w0, InMemoryStore(), lr=0.1)
    ProximalTerm(mu).before_train(ctx)
    params = {k: torch.nn.Parameter(w0[k] + d[k]) for k in w0}
    # Execute
    (term,) = ctx.loss_terms
    value = term(params)
    value.backward()
    # Assert: value (mu/2)(0.09 + 0.16 + 1) and gradient mu * d
    assert float(value.detach()) == pytest.approx(0.5 * mu * 1.25)
    for k in w0:
        assert torch.allclose(params[k].grad, mu * d[k])


def test_the_anchor_does_not_move_with_the_parameters():
    w0 = {"a": torch.zeros(2)}
    ctx = FitContext(FitTask(0, 1), w0, w0, InMemoryStore(), lr=0.1)
    ProximalTerm(1.0).before_train(ctx)
    w0["a"] += 5.0  # the caller's state changes later; the hook keeps its own copy
    (term,) = ctx.loss_terms
    assert float(term({"a": torch.nn.Parameter(torch.ones(2))}).detach()) == pytest.approx(1.0)


def test_zero_mu_adds_no_term_and_negative_mu_is_refused():
    ctx = FitContext(FitTask(0, 1), {}, {}, InMemoryStore(), lr=0.1)
    ProximalTerm(0.0).before_train(ctx)
    assert ctx.loss_terms == []
    with pytest.raises(ValueError, match="proximal_mu"):
        ProximalTerm(-1.0)
