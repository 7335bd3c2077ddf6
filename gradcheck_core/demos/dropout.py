"""A small torch classifier with dropout, and a dropout whose backward forgets to rescale.

Dropout draws a new random mask at every forward pass, so the classic advice
is to switch it off before checking gradients.  gradcheck-core instead saves
torch's random state and replays it before every evaluation, so each
evaluation sees the same mask and the gradient with dropout *on* can be
checked.

``ForgetfulDropout`` (see :func:`forgetful_dropout`) is a hand-written dropout (a
``torch.autograd.Function``) whose backward pass leaves out the ``1/(1-p)``
rescaling that its forward pass applies: every parameter in front of it gets a
gradient ``1 - p`` times too small.

torch is imported inside the functions, so importing this module never needs it.
"""

from __future__ import annotations

from typing import Any


def problem(seed: int = 0, correct: bool = True, p: float = 0.5) -> tuple[Any, Any]:
    """``(model, loss)``: an ``nn.Module`` in train mode and a zero-argument loss closure.

    Parameters
    ----------
    seed : int
        Seed for the weights and the data.
    correct : bool
        ``True``: ``nn.Dropout``; ``False``: :func:`forgetful_dropout`, whose
        backward forgets the ``1/(1-p)`` factor.
    p : float
        Dropout probability.
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(16, 4, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    dropout: nn.Module = nn.Dropout(p) if correct else _module_class()(p)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), dropout, nn.Linear(8, 3))
    torch.random.set_rng_state(state)
    model.train()

    def loss() -> Any:
        return nn.functional.cross_entropy(model(X), y)

    return model, loss


def _function() -> Any:
    import torch

    class ForgetfulDropout(torch.autograd.Function):
        """Dropout whose backward drops the ``1/(1-p)`` rescaling (a bug)."""

        @staticmethod
        def forward(ctx: Any, x: Any, p: float) -> Any:
            mask = (torch.rand_like(x) >= p).to(x.dtype)
            ctx.save_for_backward(mask)
            return x * mask / (1 - p)

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            (mask,) = ctx.saved_tensors
            return grad_out * mask, None  # should be grad_out * mask / (1 - p)

    return ForgetfulDropout


def forgetful_dropout(x: Any, p: float) -> Any:
    """Apply the buggy dropout to tensor ``x``."""
    return _function().apply(x, p)


def _module_class() -> Any:
    from torch import nn

    class ForgetfulDropoutModule(nn.Module):
        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x: Any) -> Any:
            return forgetful_dropout(x, self.p) if self.training else x

    return ForgetfulDropoutModule
