"""Hugging Face's Mamba, explained by relprop, against MambaLRP written out by hand.

The oracle re-implements ``MambaForCausalLM``'s forward from its weights (embedding, per block
RMSNorm → mixer → residual, final RMSNorm, LM head) with MambaLRP's modifications as detaches
(Jafari et al. 2024): ``Δ, B, C`` detached in the selective scan (and the decay ``exp(Δ A)``
with them), SiLU as ``x σ(x)ᵀ``, the gate ``y ⊙ silu(z)`` by the half rule, RMSNorm's
``1/rms`` detached (the identity rule); token relevance is ``Σ_d e_d ∂f/∂e_d`` on the
embeddings — LRP-0 of the modified bias-free network. Unmodified, the same code must give
the model's logits (checked first, so the oracle is the model's maths). relprop runs the
unmodified model under ``cp_lrp(epsilon=0)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import relprop
from relprop.composites import cp_lrp
from relprop.targets import TokenLogit

transformers = pytest.importorskip("transformers")

TOKEN = 5


def _model() -> torch.nn.Module:
    config = transformers.MambaConfig(vocab_size=40, hidden_size=16, state_size=4,
                                      num_hidden_layers=2, expand=2, conv_kernel=3,
                                      time_step_rank=2, use_bias=False, use_conv_bias=False)
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(config).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    return model


def _silu(t: Tensor, modified: bool) -> Tensor:
    return t * torch.sigmoid(t).detach() if modified else F.silu(t)


def _rms_norm(norm: torch.nn.Module, h: Tensor, modified: bool) -> Tensor:
    x = h.float()  # HF normalises in float32
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * (x * (scale.detach() if modified else scale)).to(h.dtype)


def _scan(mixer: torch.nn.Module, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, z: Tensor,
          modified: bool) -> Tensor:
    if modified:
        dt, B, C = dt.detach(), B.detach(), C.detach()
    A = -torch.exp(mixer.A_log.float())
    dt = F.softplus(dt + mixer.dt_proj.bias.float()[..., None])
    decay = torch.exp(A[None, :, None, :] * dt[..., None])
    update = dt[..., None] * B[:, None].float() * x[..., None].float()
    state = x.new_zeros(x.shape[0], x.shape[1], A.shape[1])
    outputs = []
    for t in range(x.shape[-1]):
        state = decay[:, :, t] * state + update[:, :, t]
        outputs.append((state * C[:, None, t, :]).sum(-1))
    y = torch.stack(outputs, dim=-1) + x * mixer.D.float()[None, :, None]
    gate = _silu(z, modified)
    return 0.5 * y * gate.detach() + 0.5 * y.detach() * gate if modified else y * gate


def _mixer(mixer: torch.nn.Module, h: Tensor, modified: bool) -> Tensor:
    x, z = mixer.in_proj(h).transpose(1, 2).chunk(2, dim=1)
    length = x.shape[-1]
    x = F.conv1d(x, mixer.conv1d.weight, padding=mixer.conv1d.padding,
                 groups=x.shape[1])[..., :length]
    x = _silu(x, modified)
    dt, B, C = torch.split(mixer.x_proj(x.transpose(1, 2)),
                           [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size],
                           dim=-1)
    dt = mixer.dt_proj.weight @ dt.transpose(1, 2)
    y = _scan(mixer, x, dt, B, C, z, modified)
    return mixer.out_proj(y.transpose(1, 2).to(h.dtype))


def _forward(model: torch.nn.Module, embeddings: Tensor, modified: bool) -> Tensor:
    h = embeddings
    for block in model.backbone.layers:
        residual = h.float() if block.residual_in_fp32 else h
        h = residual + _mixer(block.mixer, _rms_norm(block.norm, h, modified), modified)
    h = _rms_norm(model.backbone.norm_f, h, modified)
    return model.lm_head(h.to(model.lm_head.weight.dtype))


def test_hugging_face_mamba_is_mambalrp() -> None:
    model = _model()
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    embeddings = model.backbone.embeddings(ids).detach()
    with torch.no_grad():
        logits = model(ids).logits
        ours = _forward(model, embeddings, False).double()
        assert torch.allclose(ours, logits.double(), rtol=1e-5, atol=1e-6 * float(ours.abs().max()))
    e = embeddings.clone().requires_grad_(True)
    _forward(model, e, True)[:, -1, TOKEN].sum().backward()
    assert e.grad is not None
    expected = (e * e.grad).sum(-1).detach().double()

    expl = relprop.explain(model, ids, TokenLogit(TOKEN), cp_lrp(epsilon=0.0))
    # the residual stream and the scan run in float32 (residual_in_fp32, the kernel's casts)
    scale = float(expected.abs().max())
    relevance = expl.relevance.double()
    assert torch.allclose(relevance, expected, rtol=1e-4, atol=1e-5 * scale)
    assert torch.allclose(relevance.sum(1), expl.explained.double(), rtol=1e-5)
