"""Networks for the engine benchmark (``bench/engine.py``), in plain PyTorch, random weights.

* :func:`efficientnet_b0` — EfficientNet-B0's layout (Tan & Le 2019): a stem conv, seven
  MBConv stages (1x1 expansion, depthwise kxk, squeeze-and-excitation with a sigmoid gate,
  1x1 projection, residual where shapes allow), SiLU, BatchNorm after every conv, 1280-wide
  head; 5.3 M parameters at 1000 classes.
* :func:`vit_b16` — ViT-B/16 (Dosovitskiy et al. 2021): 16x16 patches by a strided conv, a
  class token, learned positions, 12 pre-norm blocks of 12-head attention
  (``F.scaled_dot_product_attention``) and a GELU MLP, 768 wide.
* :func:`llama` — a Llama-style decoder: token embedding, RMSNorm, rotary positions, causal
  grouped-query attention (SDPA), SwiGLU MLP, a vocabulary head; default 8 layers x 1024.

The ResNet-50 and VGG-16 of the benchmark are ``tests/helpers/models.py``'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["efficientnet_b0", "vit_b16", "llama", "Llama", "ViT"]

#: (expansion, output channels, repeats, stride, kernel) of EfficientNet-B0's stages
B0_STAGES = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
             (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """``x · sigmoid(W2 silu(W1 mean(x)))`` per channel."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int, kernel: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = [] if expansion == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, kernel, stride, groups=hidden),
                   SqueezeExcite(hidden, max(1, cin // 4)), _conv_bn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.residual else out


def efficientnet_b0(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
    cin = 32
    for expansion, cout, repeats, stride, kernel in B0_STAGES:
        for i in range(repeats):
            layers.append(MBConv(cin, cout, expansion, stride if i == 0 else 1, kernel))
            cin = cout
    layers += [_conv_bn(cin, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(1280, num_classes)]
    model = nn.Sequential(*layers)
    _randomize_batchnorm(model, seed)
    return model.eval()


def _randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Running statistics and affine parameters away from the identity (as after training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


class Block(nn.Module):
    """A pre-norm transformer block (ViT): SDPA attention and a GELU MLP."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        att = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, image: int = 224, patch: int = 16, dim: int = 768, depth: int = 12,
                 heads: int = 12, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, 4 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
        return self.head(self.norm(self.blocks(h))[:, 0])


def vit_b16(image: int = 224, num_classes: int = 1000, seed: int = 0, depth: int = 12) -> ViT:
    torch.manual_seed(seed)
    return ViT(image=image, depth=depth, num_classes=num_classes).eval()


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.norm1(x)
        q = self.q(h).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).reshape(b, n, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, n, d))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int, kv_heads: int,
                 hidden: int, length: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, kv_heads, hidden)
                                    for _ in range(depth))
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, vocab, bias=False)
        half = dim // heads // 2
        freq = 1.0 / (10000 ** (torch.arange(half) / half))
        angles = torch.arange(length)[:, None] * freq[None]
        self.cos: Tensor
        self.sin: Tensor
        self.register_buffer("cos", torch.cat([angles.cos()] * 2, -1), persistent=False)
        self.register_buffer("sin", torch.cat([angles.sin()] * 2, -1), persistent=False)

    def from_embeddings(self, h: Tensor) -> Tensor:
        n = h.shape[1]
        cos, sin = self.cos[:n].to(h.dtype), self.sin[:n].to(h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.head(self.norm(h))

    def forward(self, ids: Tensor) -> Tensor:
        return self.from_embeddings(self.embed(ids))


def llama(depth: int = 8, dim: int = 1024, length: int = 1024, vocab: int = 32000,
          seed: int = 0) -> Llama:
    """Llama-style decoder: ``depth`` x ``dim`` (16 heads of 64, 4 key/value heads, SwiGLU
    hidden ≈ 2.7 x dim), rotary positions up to ``length`` tokens."""
    torch.manual_seed(seed)
    heads = max(1, dim // 64)
    hidden = int(math.ceil(8 * dim / 3 / 64) * 64)
    model = Llama(vocab, dim, depth, heads, max(1, heads // 4), hidden, length)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return model.eval()
