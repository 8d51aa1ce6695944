"""Composites: which rule each op call gets, by op kind, module type, name and position.

A :class:`Composite` is an ordered list of ``(selector, rule)`` pairs; each op call of the
forward pass takes the first rule whose selector matches it and that can apply to its kind
(a conv never gets :class:`~relprop.rules.Pass`, a ReLU never gets γ). Unmatched calls get the
kind's default: LRP-0 for layers, ε (1e-6) for stand-alone BatchNorm, the identity rule for
activations, winner-take-all for max pooling, the product rule for products, and AttnLRP's
rules for softmax, LayerNorm/RMSNorm and fused attention.

Positions are in *execution* order ("the first layer that runs"), decided after the forward
pass, so "the dense layers at the top" means the linear calls after the last convolution.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from ._engine import OpCall
from .errors import RuleAssignmentError
from .rules import (
    AlphaBeta,
    Attention,
    Constant,
    Epsilon,
    Flat,
    Gamma,
    NormIdentity,
    Pass,
    Product,
    Rule,
    SoftmaxTaylor,
    WinnerTakeAll,
    ZBox,
    Zero,
    ZPlus,
)

#: op kinds that count as layers for positions ("first", "top")
LAYERS = ("linear", "conv", "conv_transpose")
CONVS = ("conv", "conv_transpose")

Bound = float | Sequence[float] | Tensor


@dataclass
class Layout:
    """Positions of the layer calls of one forward pass, for position selectors."""

    calls: Sequence[OpCall]
    layer_position: dict[int, int] = field(default_factory=dict)
    conv_position: dict[int, int] = field(default_factory=dict)
    last_conv: int = -1
    #: whether any convolution of the pass is grouped or depthwise (``groups > 1``)
    grouped: bool = False

    def __post_init__(self) -> None:
        for call in self.calls:
            if call.kind in LAYERS:
                self.layer_position[call.index] = len(self.layer_position)
            if call.kind in CONVS:
                self.conv_position[call.index] = len(self.conv_position)
                self.last_conv = call.index
                self.grouped = self.grouped or call.groups > 1


class Selector:
    """A predicate over op calls; combine with ``&``, ``|`` and ``~``. ``kinds``: the op kinds
    it can select, where that is known before any call is seen (``None``: any kind)."""

    def __init__(self, predicate: Callable[[OpCall, Layout], bool], description: str,
                 kinds: frozenset[str] | None = None) -> None:
        self.predicate = predicate
        self.description = description
        self.kinds = kinds

    def __call__(self, call: OpCall, layout: Layout) -> bool:
        return self.predicate(call, layout)

    def __and__(self, other: Selector) -> Selector:
        kinds = other.kinds if self.kinds is None else \
            self.kinds if other.kinds is None else self.kinds & other.kinds
        return Selector(lambda c, lay: self(c, lay) and other(c, lay),
                        f"({self.description} & {other.description})", kinds)

    def __or__(self, other: Selector) -> Selector:
        kinds = None if self.kinds is None or other.kinds is None else self.kinds | other.kinds
        return Selector(lambda c, lay: self(c, lay) or other(c, lay),
                        f"({self.description} | {other.description})", kinds)

    def __invert__(self) -> Selector:
        return Selector(lambda c, lay: not self(c, lay), f"~{self.description}")

    def __repr__(self) -> str:
        return self.description


def kind(*kinds: str) -> Selector:
    """Calls of these op kinds.

    Kinds: linear, conv, conv_transpose, norm (stand-alone BatchNorm), activation, max_pool,
    product, softmax, layer_norm (LayerNorm, RMSNorm), attention (fused attention).
    """
    wanted = frozenset(kinds)
    return Selector(lambda c, _: c.kind in wanted, f"kind{tuple(kinds)}", wanted)


def layer_type(*types: type[nn.Module]) -> Selector:
    """Calls made inside modules of these types (functional calls match their enclosing module)."""
    return Selector(lambda c, _: isinstance(c.module, types),
                    f"layer_type({', '.join(t.__name__ for t in types)})")


def name(*patterns: str) -> Selector:
    """Calls whose module path matches one of the glob patterns, e.g. ``"features.*"``."""
    return Selector(lambda c, _: any(fnmatch.fnmatchcase(c.path, p) for p in patterns),
                    f"name{patterns}")


def first_layers(n: int = 1) -> Selector:
    """The first ``n`` layer calls (linear, conv, transposed conv) in execution order."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return Selector(lambda c, lay: lay.layer_position.get(c.index, n) < n, f"first_layers({n})")


def top_dense() -> Selector:
    """The linear calls that run after the last convolution (all of them if there is none)."""
    return Selector(lambda c, lay: c.kind == "linear" and c.index > lay.last_conv, "top_dense()",
                    frozenset({"linear"}))


def grouped_convs() -> Selector:
    """Grouped and depthwise convolutions (``groups > 1``): each output sees few inputs, so
    often only contributions of one sign, where αβ with β > 0 returns α·R instead of R."""
    return Selector(lambda c, _: c.kind in CONVS and c.groups > 1, "grouped_convs()",
                    frozenset(CONVS))


def convs_of_grouped_nets() -> Selector:
    """Every convolution of a forward pass that has a grouped or depthwise convolution
    (MobileNet, EfficientNet, ResNeXt), the dense 1x1 and 3x3 ones included; none elsewhere."""
    return Selector(lambda c, lay: c.kind in CONVS and lay.grouped, "convs_of_grouped_nets()",
                    frozenset(CONVS))


def lower_convs(fraction: float) -> Selector:
    """The first ``fraction`` of the convolution calls in execution order."""
    def pick(c: OpCall, lay: Layout) -> bool:
        if c.index not in lay.conv_position:
            return False
        return lay.conv_position[c.index] < round(fraction * len(lay.conv_position))
    return Selector(pick, f"lower_convs({fraction})", frozenset(CONVS))


DEFAULTS: dict[str, Rule] = {
    "linear": Zero(), "conv": Zero(), "conv_transpose": Zero(), "norm": Epsilon(1e-6),
    "activation": Pass(), "max_pool": WinnerTakeAll(), "product": Product(),
    "softmax": SoftmaxTaylor(), "layer_norm": NormIdentity(), "attention": Attention(),
}


class Composite:
    """An ordered list of ``(selector, rule)``: the first match that fits the op kind wins."""

    def __init__(self, rules: Sequence[tuple[Selector, Rule]], name: str = "custom") -> None:
        for pair in rules:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], Rule)):
                raise RuleAssignmentError(
                    f"composite entries must be (selector, rule), got {pair!r}"
                )
        self.rules = list(rules)
        self.name = name

    def __repr__(self) -> str:
        inner = ", ".join(f"({s!r}, {r!r})" for s, r in self.rules)
        return f"Composite[{self.name}]({inner})"

    def rule_for(self, call: OpCall, layout: Layout) -> Rule:
        for selector, rule in self.rules:
            if call.kind in rule.kinds and selector(call, layout):
                return rule
        default = DEFAULTS.get(call.kind)
        if default is None:
            raise RuleAssignmentError(
                f"no rule of {self.name!r} selects {call.name} (op kind {call.kind!r}), and "
                "that kind has no default rule: add a (selector, rule) pair for it")
        return default

    def elementwise_ops(self) -> frozenset[str]:
        """The op names the composite's rules declared in ``Rule.elementwise_ops``."""
        names: set[str] = set()
        for _, rule in self.rules:
            names |= rule.elementwise_ops
        return frozenset(names)

    def candidates(self, kind: str) -> list[Rule]:
        """The rules this composite may give an op of ``kind``, known before the forward
        pass: the kind's default rule, then every rule for that kind whose selector may pick
        it (a selector of other kinds, ``kind("conv")``, cannot)."""
        default = DEFAULTS.get(kind)
        return ([default] if default is not None else []) + [
            rule for selector, rule in self.rules
            if kind in rule.kinds and (selector.kinds is None or kind in selector.kinds)]

    def reads_input(self, kind: str) -> bool:
        """Whether a rule this composite may give an op of ``kind`` reads the op's input values
        (``Rule.reads_input``)."""
        return any(rule.reads_input for rule in self.candidates(kind))

    def gates_take_nothing(self) -> bool:
        """Whether every rule this composite may give a product is relprop's ``Product`` with
        ``gates_take_none=True`` (the default): a product of one gate and other factors then
        gives the gate no relevance whatever call it is, and the engine may hold the gate
        constant in the forward pass (the branch that made it leaves the backward graph)."""
        return all(type(rule) is Product and rule.gates_take_none
                   for rule in self.candidates("product"))

    def assign(self, calls: Sequence[OpCall]) -> None:
        """Give every call its rule (after the forward pass, before the backward pass)."""
        layout = Layout(calls)
        for call in calls:
            call.rule = self.rule_for(call, layout)


def uniform(rule: Rule) -> Composite:
    """One rule on every op it applies to; ``uniform(Zero())`` is Gradient × Input on ReLU nets.

    Stand-alone BatchNorm (an elementwise affine map, one input per output) takes the rule
    only if it is LRP-0 or ε: γ, αβ, z⁺ and z^B are meaningless with a single contribution
    per output (αβ would scale relevance by α or −β), so BatchNorm keeps its default there.
    """
    kinds = set(rule.kinds)
    if not isinstance(rule, Zero | Epsilon):
        kinds.discard("norm")
    return Composite([(kind(*sorted(kinds)), rule)], f"uniform({rule!r})")


def _dense_conv(dense: Rule, conv: Rule, first: Rule | None, name: str) -> Composite:
    rules: list[tuple[Selector, Rule]] = []
    if first is not None:
        rules.append((first_layers(1), first))
    rules += [(kind("linear"), dense), (kind(*CONVS), conv)]
    return Composite(rules, name)


def epsilon_plus(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """ε on dense layers, z⁺ on convolutions (Zennit's ``EpsilonPlus``)."""
    return _dense_conv(Epsilon(epsilon), ZPlus(stabilizer), None, "epsilon_plus")


def epsilon_plus_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """``epsilon_plus`` with the flat rule on the first layer (Zennit's ``EpsilonPlusFlat``).

    This is LRP_CMP:α1+♭ of Kohlbrenner et al. (2020). It needs no input bounds. In relprop's
    cluttered-digits benchmark the flat first layer cost localisation, see :func:`default`.
    """
    return _dense_conv(Epsilon(epsilon), ZPlus(stabilizer), Flat(stabilizer), "epsilon_plus_flat")


def epsilon_alpha2_beta1(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """ε on dense layers, α2β1 on convolutions (Zennit's ``EpsilonAlpha2Beta1``); on nets with
    grouped or depthwise convolutions, γ = 0.25 on every convolution instead.

    αβ assumes each output has contributions of both signs; a depthwise 3×3 output has nine,
    often all of one sign, and then returns α·R: on an EfficientNet-style net the relevance
    came to −21× the logit. In relprop's cluttered-digits benchmark on a MobileNetV2-style
    net (bench/LOCALISATION.md, 4 seeds × 256 images), γ on the depthwise convolutions
    alone brought a bias-free copy's mean Σ R / f(x) from 1.92 (α2β1 everywhere) to 0.97,
    but α2β1 on the dense 1x1 convolutions still cost localisation: γ on every convolution
    conserves exactly there and localises best of the rules tried (μ_w 7.85 against 6.23;
    paired Δμ_w +1.62 [+1.16, +2.36], ΔAOPC +0.55 [+0.27, +1.04]). On nets without grouped
    convolutions this is exactly Zennit's composite, where α2β1 localised best
    (:func:`default`)."""
    return _gamma_on_grouped_nets(_dense_conv(Epsilon(epsilon), AlphaBeta(2.0, 1.0, stabilizer),
                                              None, "epsilon_alpha2_beta1"), stabilizer)


def _with_grouped(composite: Composite, stabilizer: float) -> Composite:
    """``composite`` with γ = 0.25 on grouped convolutions, before its αβ entry."""
    composite.rules.insert(len(composite.rules) - 1, (grouped_convs(),
                                                      Gamma(0.25, stabilizer)))
    return composite


def _gamma_on_grouped_nets(composite: Composite, stabilizer: float) -> Composite:
    """``composite`` with γ = 0.25 on every convolution of a net with grouped convolutions,
    before its αβ entry."""
    composite.rules.insert(len(composite.rules) - 1, (convs_of_grouped_nets(),
                                                      Gamma(0.25, stabilizer)))
    return composite


def epsilon_alpha2_beta1_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Composite:
    """``epsilon_alpha2_beta1`` with the flat rule on the first layer."""
    return _gamma_on_grouped_nets(_dense_conv(Epsilon(epsilon), AlphaBeta(2.0, 1.0, stabilizer),
                                              Flat(stabilizer), "epsilon_alpha2_beta1_flat"),
                                  stabilizer)


def epsilon_gamma_box(low: Bound, high: Bound, epsilon: float = 1e-6, gamma: float = 0.25,
                      stabilizer: float = 1e-6) -> Composite:
    """z^B(low, high) on the first layer, γ on convolutions, ε on dense layers (Zennit's
    ``EpsilonGammaBox``). ``low``/``high`` bound the input: scalars, one value per channel
    ``(C,)``, or per pixel ``(C, H, W)``, ``(1, C, H, W)`` or ``(B, C, H, W)``, see
    :class:`~relprop.rules.ZBox`."""
    return _dense_conv(Epsilon(epsilon), Gamma(gamma, stabilizer),
                       ZBox(low, high, stabilizer), "epsilon_gamma_box")


def montavon2019(low: Bound = 0.0, high: Bound = 1.0, gamma: float = 0.25,
                 epsilon: float = 0.25, lower_fraction: float = 0.5) -> Composite:
    """The composite of Montavon et al. (2019), Fig. 10.4.

    LRP-0 on the dense layers at the top, ε = ``epsilon`` × std on the upper convolutions, γ on
    the lower ``lower_fraction`` of the convolutions, z^B at the pixels (first layer).
    """
    return Composite([
        (first_layers(1), ZBox(low, high)),
        (top_dense(), Zero()),
        (lower_convs(lower_fraction), Gamma(gamma)),
        (kind(*LAYERS), Epsilon(epsilon, relative_to_std=True)),
    ], "montavon2019")


def lrp_cmp(alpha: float = 2.0, flat_layers: int = 0, epsilon: float = 1e-6) -> Composite:
    """LRP_CMP:α (Kohlbrenner et al. 2020): ε on dense layers, αβ (β = α − 1) on convolutions,
    and with ``flat_layers = n`` the flat rule (♭) on the first ``n`` layers."""
    if alpha < 1:
        raise ValueError(f"alpha must be >= 1 (beta = alpha - 1 >= 0), got {alpha!r}")
    rules: list[tuple[Selector, Rule]] = []
    if flat_layers:
        rules.append((first_layers(flat_layers), Flat()))
    rules += [(kind("linear"), Epsilon(epsilon)), (kind(*CONVS), AlphaBeta(alpha, alpha - 1.0))]
    suffix = f"+flat{flat_layers}" if flat_layers else ""
    composite = Composite(rules, f"lrp_cmp(alpha={alpha}{suffix})")
    # β > 0: γ on grouped convolutions, where αβ fails to conserve (see epsilon_alpha2_beta1;
    # the named composite keeps αβ on its dense convolutions)
    return _with_grouped(composite, 1e-6) if alpha > 1 else composite


def _transformer(epsilon: float, conv: Rule | None, softmax: Rule, attention: Attention,
                 name: str) -> Composite:
    return Composite([
        (kind("linear"), Epsilon(epsilon)),
        (kind(*CONVS), Epsilon(epsilon) if conv is None else conv),
        (kind("norm"), Epsilon(epsilon)),  # a BatchNorm no layer absorbs (LeViT, TextNet)
        (kind("softmax"), softmax),
        (kind("product"), Product(gates_take_none=True)),
        (kind("layer_norm"), NormIdentity(epsilon)),
        (kind("attention"), attention),
    ], name)


def attnlrp(epsilon: float = 1e-6, conv: Rule | None = None) -> Composite:
    """AttnLRP (Achtibat et al. 2024) for transformers.

    ε-LRP on every linear layer, the uniform product rule on products of activations
    (``q kᵀ``, ``A v``, gated MLPs), softmax by its deep-Taylor rule, the identity rule on the
    normalisation of LayerNorm/RMSNorm and on GELU/SiLU, fused attention as the composition
    of those. ``conv`` is the rule of convolutions (a ViT's patch embedding), ε by default.
    """
    return _transformer(epsilon, conv, SoftmaxTaylor(), Attention(through_scores=True),
                        "attnlrp")


def cp_lrp(epsilon: float = 1e-6, conv: Rule | None = None) -> Composite:
    """CP-LRP (Ali et al. 2022): :func:`attnlrp` with the attention weights held constant.

    No relevance flows through the query-key product: the softmax output takes
    :class:`~relprop.rules.Constant`, so ``A v`` gives all of its relevance to the values.
    """
    return _transformer(epsilon, conv, Constant(), Attention(through_scores=False), "cp_lrp")


def default(tokens: bool = False) -> Composite:
    """The composite :func:`relprop.explain` uses when none is given.

    For images and other float inputs: :func:`epsilon_alpha2_beta1`, LRP_CMP:α2 of
    Kohlbrenner et al. (2020). In relprop's cluttered-digits benchmark (4 to 13 conv layers,
    bench/LOCALISATION.md) it localised best at every depth together with uniform α2β1, and
    its maps depend more on the explained class than those of uniform α2β1 or Guided
    Backprop; it is among the best of their Table I and needs no input bounds. On nets with
    grouped or depthwise convolutions it puts γ = 0.25 on every convolution: on a
    MobileNetV2-style net of the same benchmark that conserved exactly (bias-free) and
    localised best of the rules tried, where αβ on the depthwise convolutions doubled the
    relevance and αβ on the 1x1 ones cost μ_w 1.6. On residual nets αβ does not conserve
    exactly; use :func:`epsilon_gamma_box` where conservation matters more,
    :func:`montavon2019` where class specificity does.

    For token ids (``tokens=True``): :func:`attnlrp`, ε on every layer, convolutions included.
    On relprop's sentiment benchmark (a CNN over word embeddings, relprop_bench.sentiment) ε
    localised the lexicon's evidence words better than α2β1 on the convolution (token μ 0.78
    vs 0.73); αβ was made for ReLU features, not signed embeddings. On transformers (no
    convolutions) both choices give ε on the linear layers anyway.
    """
    return attnlrp() if tokens else epsilon_alpha2_beta1()


__all__ = [
    "Composite", "Selector", "Layout", "kind", "layer_type", "name", "first_layers", "top_dense",
    "grouped_convs", "convs_of_grouped_nets", "lower_convs", "uniform", "epsilon_plus",
    "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box",
    "montavon2019", "lrp_cmp", "attnlrp", "cp_lrp", "default",
]
