"""An independent float64 oracle for AttnLRP and CP-LRP on a tiny transformer.

Written from the papers' formulas, not from relprop's code: every rule below spells out the
per-term contributions of its op and divides them by the op's output, with no autograd.

* ε-LRP on linear maps: ``R_j = Σ_k a_j w_kj / (z_k + ε·sign z_k) R_k``, ``sign(0) = +1``.
* Products of two activations (AttnLRP, Achtibat et al. 2024, uniform rule): for
  ``O_id = Σ_j A_ij V_jd`` each factor takes half of every term's share,
  ``R_A_ij = ½ Σ_d A_ij V_jd / O_id R_O_id`` and ``R_V_jd = ½ Σ_i A_ij V_jd / O_id R_O_id``.
* Softmax, deep-Taylor rule: ``R_in_i = x_i (R_i − s_i Σ_j R_j)``.
* LayerNorm ``y = w ⊙ (x − μ)/σ + b``: σ held constant makes ``y = J x + b`` affine with
  ``J_kj = w_k (δ_kj − 1/n) / σ``; ε-LRP on that map, ``R_x_j = Σ_k x_j J_kj / (y_k + ε sign y_k)
  R_y_k``. RMSNorm ``y = w ⊙ x / rms(x)`` and GELU take the identity rule ``R_in = R_out``.
* Sums (residuals, token + position embedding): ``R_a = a / (a + b) R``; scaling by a constant
  leaves relevance unchanged.
* CP-LRP (Ali et al. 2022): the attention weights are constants, ``R_A = 0`` and
  ``R_V_jd = Σ_i A_ij V_jd / O_id R_O_id``.
* An embedding lookup's relevance is the sum over its embedding dimensions.

Masks are additive with :data:`MASKED` (finite, so that ``x_i · 0`` stays 0 at masked scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MASKED", "Block", "Params", "attention_bias", "forward", "layer_norm_jacobian",
           "linear_relevance", "matmul_relevance", "random_params", "reference_relevance",
           "softmax_relevance", "sum_relevance"]

#: the additive score of a masked key: exp underflows to exactly 0 in float64
MASKED = -1e9


@dataclass
class Block:
    """One transformer block; linear weights are ``(out, in)`` like ``nn.Linear``."""

    norm1_weight: Tensor
    norm1_bias: Tensor | None
    query_weight: Tensor
    query_bias: Tensor | None
    key_weight: Tensor
    key_bias: Tensor | None
    value_weight: Tensor
    value_bias: Tensor | None
    out_weight: Tensor
    out_bias: Tensor | None
    norm2_weight: Tensor
    norm2_bias: Tensor | None
    up_weight: Tensor
    up_bias: Tensor | None
    down_weight: Tensor
    down_bias: Tensor | None


@dataclass
class Params:
    """A tiny classifier: token + position embedding, ``blocks``, norm, linear head.

    ``pre_norm`` puts each norm before its sub-layer (and a final norm before the head);
    otherwise after the residual sum (post-LN, no final norm). ``norm`` is ``"layer"`` or
    ``"rms"`` (RMSNorm, whose biases must be ``None``); ``pooling`` reads the first position
    (``"first"``) or the mean over the unmasked positions (``"mean"``).
    """

    token: Tensor
    position: Tensor
    blocks: list[Block]
    final_weight: Tensor
    final_bias: Tensor | None
    head_weight: Tensor
    head_bias: Tensor | None
    heads: int
    pre_norm: bool = True
    norm: str = "layer"
    norm_eps: float = 1e-5
    causal: bool = False
    pooling: str = "first"


def random_params(seed: int, *, vocab: int = 11, positions: int = 8, dim: int = 8, heads: int = 2,
                  hidden: int = 16, layers: int = 2, classes: int = 3, bias: bool = True,
                  norm_bias: bool = True, **options: Any) -> Params:
    """Random float64 parameters with non-trivial norm weights and biases."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale

    def linear(out: int, fan_in: int) -> tuple[Tensor, Tensor | None]:
        return normal(out, fan_in, scale=fan_in ** -0.5), normal(out, scale=0.2) if bias else None

    def norm_params() -> tuple[Tensor, Tensor | None]:
        return 1.0 + normal(dim, scale=0.4), normal(dim, scale=0.3) if norm_bias else None

    blocks = []
    for _ in range(layers):
        n1, q, k, v, o = norm_params(), linear(dim, dim), linear(dim, dim), linear(dim, dim), \
            linear(dim, dim)
        n2, up, down = norm_params(), linear(hidden, dim), linear(dim, hidden)
        blocks.append(Block(*n1, *q, *k, *v, *o, *n2, *up, *down))
    final, head = norm_params(), linear(classes, dim)
    return Params(normal(vocab, dim), normal(positions, dim, scale=0.5), blocks, *final, *head,
                  heads=heads, **options)


def attention_bias(params: Params, batch: int, seq: int, mask: Tensor | None) -> Tensor:
    """Additive scores ``(batch, 1, seq, seq)``: 0 where a query may read a key, else MASKED."""
    keep = torch.ones(batch, 1, seq, seq, dtype=torch.bool)
    if params.causal:
        keep = keep & torch.ones(seq, seq, dtype=torch.bool).tril()
    if mask is not None:
        keep = keep & (mask != 0)[:, None, None, :]
    return torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, MASKED)


# ------------------------------------------------------------------------------ forward
def _norm(params: Params, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if params.norm == "rms":
        if bias is not None:
            raise ValueError("RMSNorm has no bias: build the params with norm_bias=False")
        return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + params.norm_eps)
    centred = x - x.mean(-1, keepdim=True)
    sigma = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + params.norm_eps)
    return weight * centred / sigma + (0.0 if bias is None else bias)


def _linear(a: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return a @ weight.T + (0.0 if bias is None else bias)


def _split(params: Params, x: Tensor) -> Tensor:
    """``(batch, seq, dim)`` -> ``(batch, heads, seq, dim / heads)``."""
    batch, seq, dim = x.shape
    return x.reshape(batch, seq, params.heads, dim // params.heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    batch, heads, seq, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * head_dim)


def _attention(params: Params, block: Block, x: Tensor, bias: Tensor) -> dict[str, Tensor]:
    q = _linear(x, block.query_weight, block.query_bias)
    k = _linear(x, block.key_weight, block.key_bias)
    v = _linear(x, block.value_weight, block.value_bias)
    heads_q, heads_k, heads_v = _split(params, q), _split(params, k), _split(params, v)
    scores = heads_q @ heads_k.transpose(-2, -1) / math.sqrt(heads_q.shape[-1])
    logits = scores + bias
    weights = torch.softmax(logits, dim=-1)
    heads_out = weights @ heads_v
    merged = _merge(heads_out)
    out = _linear(merged, block.out_weight, block.out_bias)
    return dict(attn_in=x, q=q, k=k, v=v, heads_q=heads_q, heads_k=heads_k, heads_v=heads_v,
                scores=scores, bias=bias.expand_as(scores), logits=logits, weights=weights,
                merged=merged, attn_out=out)


def _mlp(block: Block, x: Tensor) -> dict[str, Tensor]:
    up = _linear(x, block.up_weight, block.up_bias)
    act = torch.nn.functional.gelu(up)
    return dict(mlp_in=x, up=up, act=act, mlp_out=_linear(act, block.down_weight, block.down_bias))


def _block(params: Params, block: Block, x: Tensor, bias: Tensor) -> dict[str, Tensor]:
    """Every intermediate of one block: ``x -> mid -> out`` with the sums written out."""
    tape: dict[str, Tensor] = dict(x=x)
    if params.pre_norm:
        tape["n1"] = _norm(params, x, block.norm1_weight, block.norm1_bias)
        tape.update(_attention(params, block, tape["n1"], bias))
        tape["mid"] = x + tape["attn_out"]
        tape["n2"] = _norm(params, tape["mid"], block.norm2_weight, block.norm2_bias)
        tape.update(_mlp(block, tape["n2"]))
        tape["out"] = tape["mid"] + tape["mlp_out"]
    else:
        tape.update(_attention(params, block, x, bias))
        tape["sum1"] = x + tape["attn_out"]
        tape["mid"] = _norm(params, tape["sum1"], block.norm1_weight, block.norm1_bias)
        tape.update(_mlp(block, tape["mid"]))
        tape["sum2"] = tape["mid"] + tape["mlp_out"]
        tape["out"] = _norm(params, tape["sum2"], block.norm2_weight, block.norm2_bias)
    return tape


def forward(params: Params, ids: Tensor, attention_mask: Tensor | None = None
            ) -> tuple[Tensor, dict[str, Tensor], list[dict[str, Tensor]]]:
    """Logits, the embedding/pooling intermediates and one tape per block."""
    batch, seq = ids.shape
    token = params.token[ids]
    position = params.position[torch.arange(seq)].expand(batch, seq, -1)
    bias = attention_bias(params, batch, seq, attention_mask)
    h = token + position
    tapes = []
    for block in params.blocks:
        tapes.append(_block(params, block, h, bias))
        h = tapes[-1]["out"]
    final = _norm(params, h, params.final_weight, params.final_bias) if params.pre_norm else h
    keep = torch.ones(batch, seq, dtype=torch.float64) if attention_mask is None \
        else (attention_mask != 0).to(torch.float64)
    if params.pooling == "first":
        pooled = final[:, 0]
    else:
        pooled = (final * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    logits = _linear(pooled, params.head_weight, params.head_bias)
    return logits, dict(token=token, position=position, embedded=token + position, hidden=h,
                        final=final, keep=keep, pooled=pooled), tapes


# ------------------------------------------------------------------------------ rules
def stabilise(z: Tensor, epsilon: float) -> Tensor:
    """``z + ε·sign(z)`` with ``sign(0) = +1``."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def linear_relevance(a: Tensor, weight: Tensor, z: Tensor, relevance: Tensor,
                     epsilon: float) -> Tensor:
    """ε-LRP: ``R_j = Σ_k a_j w_kj / (z_k + ε sign z_k) R_k``; ``weight`` is ``(..., out, in)``."""
    terms = a.unsqueeze(-2) * weight  # a_j w_kj
    return torch.einsum("...kj,...k->...j", terms, relevance / stabilise(z, epsilon))


def matmul_relevance(left: Tensor, right: Tensor, relevance: Tensor, left_share: float,
                     right_share: float) -> tuple[Tensor, Tensor]:
    """``O_id = Σ_j L_ij R_jd``: each term ``L_ij R_jd`` splits its share between the factors."""
    terms = left.unsqueeze(-1) * right.unsqueeze(-3)  # (..., i, j, d)
    share = terms * (relevance / terms.sum(-2)).unsqueeze(-2)
    return left_share * share.sum(-1), right_share * share.sum(-3)


def softmax_relevance(x: Tensor, s: Tensor, relevance: Tensor) -> Tensor:
    """Deep-Taylor rule of ``s = softmax(x)`` over the last dim: ``x_i (R_i − s_i Σ_j R_j)``."""
    return x * (relevance - s * relevance.sum(-1, keepdim=True))


def sum_relevance(parts: tuple[Tensor, ...], relevance: Tensor) -> tuple[Tensor, ...]:
    """LRP-0 on ``z = Σ parts``: ``R_part = part / z · R``."""
    total = sum(parts[1:], parts[0])
    return tuple(part / total * relevance for part in parts)


def layer_norm_jacobian(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``J_kj = w_k (δ_kj − 1/n) / σ`` per position, σ frozen: ``(..., n, n)``."""
    n = x.shape[-1]
    sigma = torch.sqrt(x.var(-1, unbiased=False) + eps)[..., None, None]
    centring = torch.eye(n, dtype=x.dtype) - 1.0 / n
    return weight[:, None] * centring / sigma


def _norm_relevance(params: Params, x: Tensor, weight: Tensor, y: Tensor, relevance: Tensor,
                    epsilon: float) -> Tensor:
    if params.norm == "rms":
        return relevance
    jacobian = layer_norm_jacobian(x, weight, params.norm_eps)
    return linear_relevance(x, jacobian, y, relevance, epsilon)


# ------------------------------------------------------------------------------ backward
def _attention_relevance(params: Params, block: Block, tape: dict[str, Tensor],
                         relevance: Tensor, epsilon: float, mode: str) -> Tensor:
    """Relevance of the attention's output -> relevance of its input."""
    r_merged = linear_relevance(tape["merged"], block.out_weight, tape["attn_out"], relevance,
                                epsilon)
    through_scores = mode == "attnlrp"
    share = (0.5, 0.5) if through_scores else (0.0, 1.0)
    r_weights, r_v = matmul_relevance(tape["weights"], tape["heads_v"], _split(params, r_merged),
                                      *share)
    r_in = linear_relevance(tape["attn_in"], block.value_weight, tape["v"], _merge(r_v), epsilon)
    if through_scores:
        r_logits = softmax_relevance(tape["logits"], tape["weights"], r_weights)
        (r_scores, _) = sum_relevance((tape["scores"], tape["bias"]), r_logits)
        r_q, r_kt = matmul_relevance(tape["heads_q"], tape["heads_k"].transpose(-2, -1), r_scores,
                                     0.5, 0.5)
        r_in = r_in + linear_relevance(tape["attn_in"], block.query_weight, tape["q"],
                                       _merge(r_q), epsilon)
        r_in = r_in + linear_relevance(tape["attn_in"], block.key_weight, tape["k"],
                                       _merge(r_kt.transpose(-2, -1)), epsilon)
    return r_in


def _mlp_relevance(block: Block, tape: dict[str, Tensor], relevance: Tensor,
                   epsilon: float) -> Tensor:
    r_act = linear_relevance(tape["act"], block.down_weight, tape["mlp_out"], relevance, epsilon)
    return linear_relevance(tape["mlp_in"], block.up_weight, tape["up"], r_act, epsilon)


def _block_relevance(params: Params, block: Block, tape: dict[str, Tensor], relevance: Tensor,
                     epsilon: float, mode: str) -> Tensor:
    """Relevance of the block's output -> relevance of its input."""
    if params.pre_norm:
        r_mid, r_mlp = sum_relevance((tape["mid"], tape["mlp_out"]), relevance)
        r_n2 = _mlp_relevance(block, tape, r_mlp, epsilon)
        r_mid = r_mid + _norm_relevance(params, tape["mid"], block.norm2_weight, tape["n2"], r_n2,
                                        epsilon)
        r_x, r_attn = sum_relevance((tape["x"], tape["attn_out"]), r_mid)
        r_n1 = _attention_relevance(params, block, tape, r_attn, epsilon, mode)
        return r_x + _norm_relevance(params, tape["x"], block.norm1_weight, tape["n1"], r_n1,
                                     epsilon)
    r_sum2 = _norm_relevance(params, tape["sum2"], block.norm2_weight, tape["out"], relevance,
                             epsilon)
    r_mid, r_mlp = sum_relevance((tape["mid"], tape["mlp_out"]), r_sum2)
    r_mid = r_mid + _mlp_relevance(block, tape, r_mlp, epsilon)
    r_sum1 = _norm_relevance(params, tape["sum1"], block.norm1_weight, tape["mid"], r_mid, epsilon)
    r_x, r_attn = sum_relevance((tape["x"], tape["attn_out"]), r_sum1)
    return r_x + _attention_relevance(params, block, tape, r_attn, epsilon, mode)


def reference_relevance(params: Params, ids: Tensor, target_class: int | Tensor, epsilon: float,
                        mode: str, attention_mask: Tensor | None = None
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Token relevance, position-embedding relevance (both ``(batch, seq)``) and the logits.

    ``mode`` is ``"attnlrp"`` or ``"cp"``; the relevance at the output is the target logit.
    """
    if mode not in ("attnlrp", "cp"):
        raise ValueError(f"mode must be 'attnlrp' or 'cp', got {mode!r}")
    logits, cache, tapes = forward(params, ids, attention_mask)
    batch, seq = ids.shape
    target = torch.as_tensor(target_class).expand(batch)
    r_logits = torch.zeros_like(logits)
    r_logits[torch.arange(batch), target] = logits[torch.arange(batch), target]
    r_pooled = linear_relevance(cache["pooled"], params.head_weight, logits, r_logits, epsilon)
    final = cache["final"]
    if params.pooling == "first":
        r_final = torch.zeros_like(final)
        r_final[:, 0] = r_pooled
    else:
        share = cache["keep"][..., None] * final / cache["keep"].sum(1)[:, None, None]
        r_final = share / cache["pooled"][:, None] * r_pooled[:, None]
    r_h = r_final
    if params.pre_norm:
        r_h = _norm_relevance(params, cache["hidden"], params.final_weight, final, r_final,
                              epsilon)
    for block, tape in zip(reversed(params.blocks), reversed(tapes)):
        r_h = _block_relevance(params, block, tape, r_h, epsilon, mode)
    r_token, r_position = sum_relevance((cache["token"], cache["position"]), r_h)
    return r_token.sum(-1), r_position.sum(-1), logits
