"""Check the autograd graph of the explained output: every op must have a rule or be linear.

After the forward pass, each node between the output and the input is either one of
relprop's own (an op with a rule), a linear op whose gradient already is LRP-0 (adds,
concatenation, reshapes, slicing, mean pooling, ...), or an op whose gradient is the
accepted rule (ReLU, winner-take-all max), or a linear map over the reals (the Fourier
transforms of FNet and the moves between real and complex tensors around them). Anything
else — ``exp``, ``sort``, a division by an activation, a custom autograd function — would get
a silently wrong share of relevance and is reported by module path and op. ``CopySlices`` (an
in-place op on a view) hides the op it wraps; it passes because every in-place op the model's
Python code calls goes through :mod:`relprop._inplace`, which runs only copies, index writes
and ReLU gates in place (any other op is computed out of place, where this check sees it);
what remains are the copies inside PyTorch's own composite ops (``pad_packed_sequence``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import Session

#: nodes of ops that only move values around (each output is a copy of one input or 0)
INDEX_ONLY = frozenset({
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "AsStridedBackward0",
    "AsStridedBackward1",
    "ExpandBackward0", "PermuteBackward0", "TransposeBackward0", "TransposeBackward1",
    "TBackward0", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2",
    "SqueezeBackward3", "SqueezeBackward4", "UnsqueezeBackward0", "SliceBackward0",
    "SelectBackward0", "IndexBackward0", "IndexSelectBackward0", "GatherBackward0",
    "SplitBackward0", "SplitWithSizesBackward0", "UnbindBackward0", "CloneBackward0",
    "AliasBackward0", "ToCopyBackward0", "CatBackward0", "StackBackward0", "RepeatBackward0",
    "FlipBackward0", "RollBackward0", "NarrowBackward0", "ExpandAsBackward0",
    "ViewAsBackward0", "ConstantPadNdBackward0", "ReflectionPad1DBackward0",
    "ReflectionPad2DBackward0", "ReflectionPad3DBackward0", "ReplicationPad1DBackward0",
    "ReplicationPad2DBackward0", "ReplicationPad3DBackward0", "PackPaddedSequenceBackward0",
    "PadPackedSequenceBackward0",
})
#: backward nodes of linear ops (their gradient is exact LRP-0) or of ReLU-like gates
ACCEPTED = INDEX_ONLY | frozenset({
    "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "RsubBackward1",
    "NegBackward0", "MeanBackward0", "MeanBackward1", "SumBackward0", "SumBackward1",
    "AvgPool2DBackward0", "AvgPool3DBackward0", "AdaptiveAvgPool2DBackward0",
    "AdaptiveAvgPool3DBackward0", "UpsampleNearest1DBackward0", "UpsampleNearest2DBackward0",
    "UpsampleNearest3DBackward0", "UpsampleLinear1DBackward0", "UpsampleBilinear2DBackward0",
    "UpsampleTrilinear3DBackward0", "UnfoldBackward0", "Im2ColBackward0", "Col2ImBackward0",
    "PixelShuffleBackward0", "PixelUnshuffleBackward0", "WhereBackward0",
    "MaskedFillBackward0", "MaskedFillBackward1", "DiagonalBackward0", "ReluBackward0",
    "CopyBackwards", "CopySlices",
    "IndexPutBackward0", "FillBackward0", "FillBackward1", "FillBackward2", "FillBackward3",
    "ZeroBackward0", "IndexAddBackward0", "IndexCopyBackward0", "IndexFillBackward0",
    "IndexFillBackward1", "ScatterBackward0", "ScatterBackward1", "ScatterAddBackward0",
    "MaskedScatterBackward0", "PutBackward0", "SliceScatterBackward0",
    "SelectScatterBackward0", "DiagonalScatterBackward0", "AsStridedScatterBackward0",
    "ThresholdBackward0", "LeakyReluBackward0", "ClampMinBackward0",
    "MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0",
    "AdaptiveMaxPool2DBackward0", "AdaptiveMaxPool3DBackward0", "MaxBackward0",
    "MaxBackward1", "AmaxBackward0", "MaximumBackward0", "NativeDropoutBackward0",
    "AccumulateGrad",
}) | frozenset({
    # Fourier mixing (FNet): the discrete Fourier transforms and the moves between real and
    # complex tensors are linear over the reals, so their gradient is exact LRP-0
    "FftR2CBackward0", "FftC2CBackward0", "FftC2RBackward0", "ViewAsRealBackward0",
    "ViewAsComplexBackward0", "RealBackward0", "ImagBackward0", "ComplexBackward0",
    "ConjBackward0", "ConjPhysicalBackward0", "NegViewBackward0",
})
#: linear only when one operand is a constant (otherwise a product or a quotient of activations)
ONE_SIDED = frozenset({"MulBackward0", "DivBackward0", "MmBackward0", "BmmBackward0",
                       "AddmmBackward0", "AddbmmBackward0", "MvBackward0", "DotBackward0",
                       # Hugging Face's default MoE experts: one matmul per expert's rows
                       "GroupedMmBackward0"})


def find_unsupported(session: Session, root: Any) -> list[str]:
    """Descriptions ``'path: op (node)'`` of the ops on the relevance path with no rule."""
    problems: list[str] = []
    seen: set[Any] = set()
    stack: list[tuple[Any, str]] = [(root, "<model>")]
    while stack:
        node, consumer = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        path, op = session.node_info.get(node, (consumer, "?"))
        kind = type(node).__name__
        if node not in session.approved and not _accepted(node, kind):
            if op == "?":
                problems.append(f"'{path}': autograd node {kind}, made by an op relprop "
                                "does not see (e.g. a custom autograd Function)")
            else:
                problems.append(f"'{path}': op '{op}' (autograd node {kind})")
        for parent, _ in node.next_functions:
            stack.append((parent, path))
    return problems


def _accepted(node: Any, kind: str) -> bool:
    if kind in ACCEPTED:
        return True
    if kind in ONE_SIDED:
        return sum(parent is not None for parent, _ in node.next_functions) <= 1
    return False
