"""Which optax wrappers a gradient-free method is being called through.

A method that takes the batch and never reads gradients (ADMMiRNN) cannot honour a
transformation that acts on gradients before it: ``optax.chain(clip, method)`` would clip
gradients it ignores, and ``optax.MultiSteps(method, k)`` calls it on every mini-batch and
keeps one result in ``k``, so the other batches would be dropped. Neither wrapper tells the
method it is there, so the method looks at its callers: the Python frames of ``optax.chain``'s
and ``optax.MultiSteps``' ``update`` are on the stack while they call it (also while ``jit``
traces them), and a chain's frame holds the states of the transformations already run.
"""

from __future__ import annotations

import sys

import optax

_CHAINS = (optax.chain(optax.identity()).update.__code__,
           optax.named_chain(("identity", optax.identity())).update.__code__)
_MULTI_STEPS = optax.MultiSteps.update.__code__


def refuse_gradient_wrappers(name: str) -> None:
    """Raise a ``ValueError`` when the calling ``update`` of the method ``name`` runs behind a
    transformation in an ``optax.chain`` (or ``named_chain``) or inside ``optax.MultiSteps``.

    A chain's position is read from the chain's own frame (the states of the transformations
    already run), so ``optax.chain(method, optax.scale(2.0))`` is accepted, also as the first
    element of an outer chain. Cost: a walk up the Python stack, once per trace
    under ``jit`` (per call in an eager loop, microseconds).

    Examples:
      >>> import optax
      >>> def update(*_):
      ...     refuse_gradient_wrappers("mine")
      ...     return None, ()
      >>> tx = optax.chain(optax.identity(), optax.GradientTransformation(lambda p: (), update))
      >>> tx.update(None, tx.init(None))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: optimizer: mine takes the batch instead of gradients, so the transformation ...
    """
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code is _MULTI_STEPS:
            raise ValueError(
                f"optimizer: {name} takes the batch instead of gradients, so optax.MultiSteps "
                "would call it on every mini-batch and keep one step in k_steps, dropping the "
                "other batches; use a larger batch instead")
        if code in _CHAINS and frame.f_locals.get("new_state"):
            raise ValueError(
                f"optimizer: {name} takes the batch instead of gradients, so the transformation "
                "before it in optax.chain would act on gradients it never reads; put it first "
                f"(optax.chain({name}(...), ...) transforms its steps)")
        frame = frame.f_back
