"""The PyTorch adapter: autograd checked against float64 finite differences.

Every evaluation runs in float64, whatever the dtype of the model, and
everything the check changes is put back when it ends.  The package is split
by what each part does:

* :mod:`.adapter`: :class:`TorchAdapter` (``ADAPTER``), functional and
  zero-argument losses, the target a check evaluates;
* :mod:`.float64`: :class:`Float64Mode`, :class:`Promotion` and
  :func:`float64_scope`, which force float64 during an evaluation;
* :mod:`.state`: the snapshot that restores parameters, modules, dtypes,
  grad mode and random generators (:func:`torch_rng_states`);
* :mod:`.batching`: a sweep's points evaluated through ``torch.func.vmap``;
* :mod:`.autodiff`: gradients, VJPs and JVPs on float64 copies.

``ADAPTER.vmap = False`` makes every sweep loop over its points.
"""

from __future__ import annotations

from .adapter import ADAPTER, TorchAdapter
from .float64 import Float64Mode, Promotion, float64_scope
from .state import torch_rng_states

__all__ = ["ADAPTER", "Float64Mode", "Promotion", "TorchAdapter", "float64_scope", "torch_rng_states"]
