"""A public suite of correct and broken gradients, in plain numpy.

Every case is a loss of one flat float64 vector with a handwritten gradient,
so that any checker (ours, torch's gradcheck through a custom Function, JAX's
check_grads through a custom_vjp, scipy's check_grad) can be run on exactly
the same mathematics.  See ``cases.py``.
"""
