"""Oracle comparison with Zennit 0.5.1 (test-only; `make test` installs it, and without it
these tests fail rather than skip).

Zennit hooks modules, relprop intercepts functional ops; on VGG-style nets, where every op
Zennit has a rule for is a module, both must give the same relevance map:

* ``epsilon_gamma_box(-3, 3)`` vs ``EpsilonGammaBox(-3, 3)``, ``epsilon_plus_flat()`` vs
  ``EpsilonPlusFlat()``, ``epsilon_alpha2_beta1()`` vs ``EpsilonAlpha2Beta1()``, on plain and
  BatchNorm VGG nets, several seeds, the top class and a fixed class (often a negative logit);
  criterion ``max |dR| <= 1e-4 * max |R|`` in float32 (measured: about 1e-6).
* Conventions aligned here: relprop starts from ``R = y_c`` (the logit), Zennit from
  ``attr_output``, so Zennit gets ``one_hot * output``. Zennit's first-layer rules go to the
  first Conv/Linear module in registration order, which in these nets is also execution order.
* BatchNorm: Zennit's ``SequentialMergeBatchNorm`` resets the BN to ``running_var = 1`` but
  keeps ``eps``, so its merged model computes ``z / sqrt(1 + eps)`` (a 5e-6 relative error, enough
  to move ReLU gates and stabilised denominators). Zennit therefore runs, without canonizer, on a
  copy in which every BN is folded exactly into the preceding conv (in float64) and replaced by
  ``Identity``; relprop runs on the original BN model and merges the BN itself.
* Measured difference, not a bug on either side: Zennit treats the gradient as relevance at
  ops it does not hook, so a functional residual ``r = h + f(h)`` hands the full ``R_r`` to both
  summands and the input relevance sums to twice the logit; relprop splits ``R_r`` in
  proportion to ``h`` and ``f(h)`` and conserves.

Zennit's ``zennit.torchvision`` module imports ``torchvision.models.resnet`` at import time;
torchvision is not a dependency, so a minimal stand-in is put into ``sys.modules`` for the
import only, and removed again.
"""

from __future__ import annotations

import copy
import importlib.util
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import composites as rc
from relprop import rules as rr
from tests.helpers import models as M
from tests.helpers.stand_ins import installed, torchvision_stand_in

TOLERANCE = 1e-4  # max |relprop - zennit| <= TOLERANCE * max |zennit|
SEEDS = (0, 1, 2)
FIXED_CLASS = 3


# --------------------------------------------------------------------------- zennit import
@pytest.fixture(scope="module")
def zennit() -> Iterator[types.SimpleNamespace]:
    """Zennit's ``Gradient`` attributor and composites, imported with a torchvision stand-in.

    A missing zennit is an error, not a skip: a missing oracle must fail the suite (and so
    must a stand-in that no longer covers what zennit imports).
    """
    if not installed("zennit"):
        raise ImportError("the test oracle zennit is not installed: run `make .venv/"
                          ".relprop-installed` or `pip install --no-deps zennit==0.5.1`")
    with torchvision_stand_in():
        attribution = importlib.import_module("zennit.attribution")
        composites = importlib.import_module("zennit.composites")
        zrules = importlib.import_module("zennit.rules")
        ztypes = importlib.import_module("zennit.types")
        importlib.import_module("zennit")  # the package imports zennit.torchvision
    yield types.SimpleNamespace(Gradient=attribution.Gradient, composites=composites,
                                rules=zrules, types=ztypes)


# ------------------------------------------------------------------------------- helpers
def _input(shape: tuple[int, ...], seed: int, bound: float = 3.0) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1000 + seed))
    return x.clamp(-bound, bound)


def _zennit_relevance(zn: types.SimpleNamespace, model: nn.Module, composite: Any,
                      x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Zennit's LRP map, seeded with ``one_hot(target) * output`` (relevance = the logit)."""
    def attr_output(output: torch.Tensor) -> torch.Tensor:
        return F.one_hot(target, output.shape[1]).to(output) * output

    with zn.Gradient(model, composite) as attributor:
        _, relevance = attributor(x.clone(), attr_output)
    return relevance.detach()


@torch.no_grad()
def _merge_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every BatchNorm folded exactly into the conv before it (``W' = W s``,
    ``b' = (b - mu) s + beta``, ``s = gamma / sqrt(var + eps)``, in float64) and replaced by
    ``Identity``."""
    merged = copy.deepcopy(model)
    for seq in merged.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        previous: nn.Module | None = None
        for name, module in list(seq.named_children()):
            if isinstance(module, nn.BatchNorm2d):
                assert isinstance(previous, nn.Conv2d), "BN must follow a conv in these nets"
                mean, var = module.running_mean, module.running_var
                gamma, beta = module.weight, module.bias
                assert mean is not None and var is not None and gamma is not None
                assert beta is not None
                scale = gamma.double() / torch.sqrt(var.double() + module.eps)
                bias = (previous.bias.double() if previous.bias is not None
                        else torch.zeros_like(scale))
                weight = previous.weight.double() * scale.reshape(-1, 1, 1, 1)
                previous.weight.copy_(weight.to(previous.weight.dtype))
                new_bias = (bias - mean.double()) * scale + beta.double()
                previous.bias = nn.Parameter(new_bias.to(previous.weight.dtype))
                setattr(seq, name, nn.Identity())
            previous = module
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in merged.modules())
    return merged.eval()


def _vgg(batch_norm: bool, seed: int) -> nn.Module:
    model = M.vgg("D-tiny", batch_norm=batch_norm, seed=seed)
    return M.randomize_batchnorm(model, seed=seed) if batch_norm else model


def _targets(output: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"top": output.argmax(1),
            "fixed": torch.full((output.shape[0],), FIXED_CLASS, dtype=torch.long)}


def _compare(zn: types.SimpleNamespace, model: nn.Module, zennit_model: nn.Module,
             x: torch.Tensor, make_relprop: Callable[[], rc.Composite],
             make_zennit: Callable[[], Any]) -> dict[str, float]:
    """max |dR| / max |R| for each target; asserts the criterion."""
    with torch.no_grad():
        output = model(x)
    ratios: dict[str, float] = {}
    for label, target in _targets(output).items():
        ours = relprop.explain(model, x, target, make_relprop()).relevance
        theirs = _zennit_relevance(zn, zennit_model, make_zennit(), x, target)
        assert ours.shape == theirs.shape
        assert bool(torch.isfinite(ours).all()) and bool(torch.isfinite(theirs).all())
        scale = float(theirs.abs().max())
        assert scale > 0
        ratios[label] = float((ours - theirs).abs().max()) / scale
    assert max(ratios.values()) <= TOLERANCE, ratios
    return ratios


# ---------------------------------------------------------------- the named composites
COMPOSITES: list[tuple[str, Callable[[], rc.Composite], Callable[[types.SimpleNamespace], Any]]] = [
    ("epsilon_gamma_box", lambda: rc.epsilon_gamma_box(low=-3.0, high=3.0),
     lambda zn: zn.composites.EpsilonGammaBox(low=-3.0, high=3.0)),
    ("epsilon_plus_flat", rc.epsilon_plus_flat, lambda zn: zn.composites.EpsilonPlusFlat()),
    ("epsilon_alpha2_beta1", rc.epsilon_alpha2_beta1,
     lambda zn: zn.composites.EpsilonAlpha2Beta1()),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg", "vgg-bn"])
@pytest.mark.parametrize("composite", COMPOSITES, ids=[c[0] for c in COMPOSITES])
def test_vgg_agrees_with_zennit(zennit: types.SimpleNamespace, composite: tuple[Any, ...],
                                batch_norm: bool, seed: int) -> None:
    _, make_relprop, make_zennit = composite
    model = _vgg(batch_norm, seed)
    x = _input((2, 3, 32, 32), seed)
    zennit_model = _merge_batchnorm(model) if batch_norm else model
    if batch_norm:
        with torch.no_grad():
            reference = model(x)
            torch.testing.assert_close(zennit_model(x), reference, rtol=0,
                                       atol=1e-5 * max(1.0, float(reference.abs().max())))
    _compare(zennit, model, zennit_model, x, make_relprop, lambda: make_zennit(zennit))


def test_merged_copy_is_exact() -> None:
    """The BN folding used for Zennit reproduces the BN model (float64 fold, float32 run)."""
    for seed in SEEDS:
        model = _vgg(True, seed)
        merged = _merge_batchnorm(model)
        x = _input((2, 3, 32, 32), seed)
        with torch.no_grad():
            reference = model(x)
            torch.testing.assert_close(merged(x), reference, rtol=0,
                                       atol=1e-5 * max(1.0, float(reference.abs().max())))


# ------------------------------------------ rule branches VGG never reaches (signed I/O)
class _SignedNet(nn.Module):
    """conv-ReLU-conv-flatten-linear: the second conv's outputs are signed and all carry
    relevance (no ReLU after it), and the first conv sees signed pixels, so γ and αβ run
    their negative-input and negative-output branches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv2(self.relu(self.conv1(x))), 1))


def _signed_net(seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = _SignedNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _zennit_layer_map(zn: types.SimpleNamespace, conv: Any, dense: Any) -> Any:
    base = zn.composites.layer_map_base()
    return zn.composites.LayerMapComposite(
        base + [(zn.types.Convolution, conv), (nn.Linear, dense)])


_LOW, _HIGH = [-2.0, -2.5, -3.0], [2.0, 2.5, 3.0]
EXTRA: list[tuple[str, Callable[[], rc.Composite], Callable[[types.SimpleNamespace], Any]]] = [
    ("gamma-everywhere", lambda: rc.uniform(rr.Gamma()),
     lambda zn: _zennit_layer_map(zn, zn.rules.Gamma(), zn.rules.Gamma())),
    ("alpha2beta1-everywhere", lambda: rc.uniform(rr.AlphaBeta()),
     lambda zn: _zennit_layer_map(zn, zn.rules.AlphaBeta(), zn.rules.AlphaBeta())),
    ("epsilon_plus", rc.epsilon_plus, lambda zn: zn.composites.EpsilonPlus()),
    ("epsilon_gamma_box-per-channel", lambda: rc.epsilon_gamma_box(low=_LOW, high=_HIGH),
     lambda zn: zn.composites.EpsilonGammaBox(low=torch.tensor(_LOW).reshape(1, 3, 1, 1),
                                              high=torch.tensor(_HIGH).reshape(1, 3, 1, 1))),
]


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("composite", EXTRA, ids=[c[0] for c in EXTRA])
def test_signed_branches_agree_with_zennit(zennit: types.SimpleNamespace,
                                           composite: tuple[Any, ...], seed: int) -> None:
    _, make_relprop, make_zennit = composite
    model = _signed_net(seed)
    x = _input((2, 3, 8, 8), seed, bound=2.0)
    _compare(zennit, model, model, x, make_relprop, lambda: make_zennit(zennit))


# ----------------------------------------------- functional residual: measured difference
class _FunctionalResidual(nn.Module):
    """Bias-free ``h = stem(x)``, ``r = h + body2(relu(body1(h)))``, ``y = fc(r)``: positively
    homogeneous, so conservative rules must give input relevance summing to ``y_c``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.body1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.body2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 8 * 8, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        r = h + self.body2(F.relu(self.body1(h)))
        return self.fc(r.flatten(1))


def test_functional_residual_zennit_double_counts_relprop_conserves(
        zennit: types.SimpleNamespace) -> None:
    """Zennit sees no module for the functional ``+``; its gradient copies ``R_r`` into both
    summands, so its input relevance sums to ``2 y_c`` (measured within 3e-5 relative).
    relprop splits ``R_r`` in proportion to the summands and sums to ``y_c``."""
    for seed in SEEDS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _FunctionalResidual().eval()
        x = _input((2, 3, 8, 8), seed)
        ours = relprop.explain(model, x, None, rc.epsilon_plus())
        target = ours.output.argmax(1)
        theirs = _zennit_relevance(zennit, model, zennit.composites.EpsilonPlus(), x, target)
        explained = ours.explained
        assert bool((explained.abs() > 1e-2).all())
        theirs_sum = theirs.flatten(1).sum(1)
        torch.testing.assert_close(ours.relevance_sum(), explained, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(theirs_sum, 2 * explained, rtol=1e-3, atol=1e-6)
        assert bool(((theirs_sum - explained).abs() > 0.5 * explained.abs()).all())
