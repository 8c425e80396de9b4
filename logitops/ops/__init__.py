"""Typed wrappers over torch.ops.logitops, with their fake kernels and autograd registrations."""

from . import cross_entropy

__all__ = ["cross_entropy"]
