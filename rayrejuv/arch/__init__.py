"""Architecture knowledge as data: which tensors exist, which form a neuron, how embeddings tie."""

from rayrejuv.arch.registry import ARCHITECTURES, ModelGeometry, spec_for
from rayrejuv.arch.spec import ArchSpec, Axis, NeuronKind, TensorRole

__all__ = ["ARCHITECTURES", "ArchSpec", "Axis", "ModelGeometry", "NeuronKind", "TensorRole", "spec_for"]
