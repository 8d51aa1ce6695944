"""Saved and compiled models: ``torch.export`` programs (also through a ``.pt2`` file),
``torch.compile``d models and submodules, gradient checkpointing, ONNX (refused, named).

Each is compared with the eager module's relevance in float64."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import relprop
from relprop import composites
from relprop._engine import short_name
from relprop.errors import InvalidInputError, UnsupportedOperationError

TOL = 1e-12


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():  # rule-assumption warnings of αβ on random nets
        warnings.simplefilter("ignore")
        yield


def _randomise_norms(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


class VGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(16, 5))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.maxpool(self.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 4))


def _model_and_input(kind: str) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    if kind == "mlp":
        return _mlp().double().eval(), torch.randn(3, 10, dtype=torch.float64)
    model = VGG() if kind == "vgg" else ResNet()
    return (_randomise_norms(model).double().eval(),
            torch.rand(2, 3, 16, 16, dtype=torch.float64))


COMPOSITES = {
    "epsilon_gamma_box": lambda: composites.epsilon_gamma_box(0.0, 1.0),
    "epsilon_alpha2_beta1": composites.epsilon_alpha2_beta1,
}


@pytest.mark.parametrize("kind", ["vgg", "resnet", "mlp"])
@pytest.mark.parametrize("composite", sorted(COMPOSITES))
def test_exported_program_gives_the_eager_relevance(kind: str, composite: str) -> None:
    model, x = _model_and_input(kind)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager = relprop.explain(model, x, 1, COMPOSITES[composite]())
    program = torch.export.export(model, (x,))
    for exported in (program, program.module()):
        expl = relprop.explain(exported, x, 1, COMPOSITES[composite](), verify=True)
        assert (expl.relevance - eager.relevance).abs().max().item() <= TOL
        torch.testing.assert_close(expl.output, eager.output, rtol=TOL, atol=TOL)
        # the same ops under the same names and rules: BatchNorm merged, the first layer's
        # rule on the first layer
        assert expl.rules == eager.rules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    if kind != "mlp":
        assert any("+batch_norm" in name for name in eager.rules)


@pytest.mark.parametrize("kind", ["vgg", "resnet", "mlp"])
def test_core_aten_program_gives_the_eager_relevance(kind: str) -> None:
    """``run_decompositions()``: ``convolution``, ``_native_batch_norm_legit_no_training`` and
    ``max_pool2d_with_indices`` (tuples), ``addmm`` for ``linear``."""
    model, x = _model_and_input(kind)
    eager = relprop.explain(model, x, 1, composites.epsilon_gamma_box(0.0, 1.0))
    program = torch.export.export(model, (x,)).run_decompositions()
    expl = relprop.explain(program, x, 1, composites.epsilon_gamma_box(0.0, 1.0))
    assert (expl.relevance - eager.relevance).abs().max().item() <= TOL
    renamed = {name.replace(":linear", ":addmm"): rule for name, rule in eager.rules.items()}
    assert expl.rules == renamed


def test_pt2_file_round_trip(tmp_path: Path) -> None:
    model, x = _model_and_input("resnet")
    eager = relprop.explain(model, x, 2, composites.epsilon_gamma_box(0.0, 1.0))
    path = tmp_path / "resnet.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    loaded = torch.export.load(path)
    expl = relprop.explain(loaded, x, 2, composites.epsilon_gamma_box(0.0, 1.0))
    assert (expl.relevance - eager.relevance).abs().max().item() <= TOL
    assert expl.rules == eager.rules
    with pytest.raises(InvalidInputError, match=r"torch\.export\.load"):
        relprop.explain(str(path), x)  # type: ignore[arg-type]


def test_program_exported_in_training_mode_is_refused() -> None:
    model, x = _model_and_input("vgg")
    program = torch.export.export(model.train(), (x,))
    model.eval()
    for exported in (program, program.module()):
        with pytest.raises(InvalidInputError, match=r"exported in training mode.*model\.eval"):
            relprop.explain(exported, x)


def test_aten_op_names() -> None:
    aten = torch.ops.aten
    assert short_name(aten.conv2d.default) == "conv2d"
    assert short_name(aten.linear.default) == "linear"
    assert short_name(aten.relu_.default) == "relu_"
    assert short_name(aten.add.Tensor) == "add"
    assert short_name(aten.view.default) == "view"
    # arguments in another order or tuples returned: adapters
    assert short_name(aten.batch_norm.default) == "aten::batch_norm"
    assert short_name(aten._native_batch_norm_legit_no_training.default) \
        == "aten::_native_batch_norm_legit_no_training"
    assert short_name(aten.max_pool2d_with_indices.default) == "aten::max_pool2d_with_indices"
    assert short_name(aten.embedding.default) == "aten::embedding"


def test_exported_op_with_no_rule_is_named() -> None:
    class Exp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(torch.exp(x))

    model = Exp().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedOperationError, match=r"'exp'.*ExpBackward"):
        relprop.explain(torch.export.export(model, (x,)), x)


def _tiny_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    model: nn.Module = transformers.BertForSequenceClassification(config)
    return model.double().eval()


def test_compiled_hf_model_and_submodule_give_the_eager_relevance() -> None:
    model = _tiny_bert()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    eager = relprop.explain(model, ids, 1)
    compiled = relprop.explain(torch.compile(model), ids, 1)
    assert (compiled.relevance - eager.relevance).abs().max().item() <= TOL
    assert compiled.rules == eager.rules
    inner = copy.deepcopy(model)
    inner.bert.encoder.layer[0] = torch.compile(inner.bert.encoder.layer[0])
    expl = relprop.explain(inner, ids, 1)
    assert (expl.relevance - eager.relevance).abs().max().item() <= TOL
    assert len(expl.rules) == len(eager.rules)


def test_hf_gradient_checkpointing_in_eval_mode() -> None:
    model = _tiny_bert()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    eager = relprop.explain(model, ids, 0)
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable()
    checkpointed.eval()
    expl = relprop.explain(checkpointed, ids, 0)
    assert (expl.relevance - eager.relevance).abs().max().item() <= TOL


class _Checkpointed(nn.Module):
    """Checkpointing that is active in eval mode too (a plain ``checkpoint`` call)."""

    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.reentrant = reentrant

    def inner(self, h: Tensor) -> Tensor:
        return torch.relu(self.b(h))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if self.reentrant is None:
            h = self.inner(h)
        else:
            h = checkpoint(self.inner, h, use_reentrant=self.reentrant)
        return self.c(h)


def test_checkpoint_active_in_eval_mode() -> None:
    torch.manual_seed(0)
    plain = _Checkpointed(None).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    eager = relprop.explain(plain, x, 1)
    # non-reentrant: the recomputation in the backward pass only restores saved tensors
    model = copy.deepcopy(plain)
    model.reentrant = False
    expl = relprop.explain(model, x, 1)
    assert (expl.relevance - eager.relevance).abs().max().item() <= TOL
    # reentrant: its ops run in a node of its own that relprop cannot see into
    model.reentrant = True
    with pytest.raises(UnsupportedOperationError, match="CheckpointFunctionBackward"):
        relprop.explain(model, x, 1)


def test_onnx_is_refused_with_how_to_convert(tmp_path: Path) -> None:
    x = torch.randn(2, 10)
    with pytest.raises(InvalidInputError, match=r"ONNX.*onnx2torch"):
        relprop.explain(str(tmp_path / "model.onnx"), x)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"ONNX.*onnx2torch"):
        relprop.explain(tmp_path / "model.onnx", x)  # type: ignore[arg-type]
    proto = type("ModelProto", (), {"__module__": "onnx.onnx_ml_pb2"})()
    with pytest.raises(InvalidInputError, match=r"ONNX.*torch\.export"):
        relprop.explain(proto, x)  # type: ignore[arg-type]
