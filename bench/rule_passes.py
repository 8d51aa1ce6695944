#!/usr/bin/env python
"""Time one layer rule's ``propagate`` on one convolution, against the plain input gradient.

The inner loop for the elementwise cost of the αβ and γ rules (issue 14): a conv with a
BatchNorm merged in, optionally a merged ReLU (``--clipped``), inputs ``a >= 0`` (a ReLU's
output) or of both signs (``--signed``, as after SiLU), a ``--groups`` for depthwise convs.
Reports process CPU time (min over interleaved rounds) of ``rule.propagate`` and of the
op's own vjp (``gradient``), and checks the float32 result against the same rule's formula
evaluated in float64 with plain convolutions (``--check``).

``--pieces`` (αβ) also times the kernels the rule's floor is made of, the forward with
``W⁺`` and the one vjp of ``[s⁺, s⁻]`` (through ``[W⁺; W⁻]``, or on inputs of both signs with
few channels the block ``[[W⁺, W⁻], [W⁻, W⁺]]`` on ``[a⁺, a⁻]``), so that the rule's time
splits into those and the rest (elementwise passes, the report, allocation).

Usage::

    python bench/rule_passes.py --rule alphabeta --channels 64 --side 56 --batch 16 --clipped
    python bench/rule_passes.py --rule gamma --channels 96 --groups 96 --signed --batch 8
    python bench/rule_passes.py --rule alphabeta --in-channels 3 --channels 64 --kernel 7 \
        --stride 2 --side 224 --batch 1 --signed --clipped --pieces   # ResNet-50's first layer
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relprop import rules
from relprop.rules import cache
from relprop.rules.ops import LinearOp


def make_op(conv: nn.Conv2d, bn: nn.BatchNorm2d, clipped: bool) -> LinearOp:
    """The engine's view of ``bn(conv(a))``: a conv op with the BatchNorm merged in, its
    modified weights kept across calls as in ``relprop.explain`` (the ρ(W) cache)."""
    options = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
               "groups": conv.groups, "fn": F.conv2d}
    weight = conv.weight.detach()
    cache.detached_from(weight, conv.weight)
    base = LinearOp("conv", weight, None, options)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    shift = (bn.bias - bn.running_mean * scale).detach()
    op = base.fuse_affine(scale, shift, (bn.running_var, bn.running_mean, bn.weight, bn.bias,
                                         float(bn.eps)))
    op.clipped = clipped
    return op


def reference(name: str, a: Tensor, W: Tensor, b: Tensor, z: Tensor, grad: Tensor,
              groups: int, eps: float, stride: int = 1) -> Tensor:
    """The rule's formula in float64 with plain convs: the input relevance ``R_j``."""
    pad = W.shape[-1] // 2
    conv = lambda x, w, bias=None: F.conv2d(x, w, bias, stride, pad, groups=groups)
    vjp = lambda w, s: torch.nn.grad.conv2d_input(a.shape, w, s, stride, pad, groups=groups)
    R = z * grad
    wp, wn, ap, an = W.clamp(min=0), W.clamp(max=0), a.clamp(min=0), a.clamp(max=0)
    zp = conv(ap, wp) + conv(an, wn) + b.clamp(min=0).view(1, -1, 1, 1)
    zn = conv(ap, wn) + conv(an, wp) + b.clamp(max=0).view(1, -1, 1, 1)
    st = lambda d: d + eps * torch.where(d >= 0, 1.0, -1.0)

    def spread(sp: Tensor, sn: Tensor) -> Tensor:  # R_j = a⁺(W⁺sp + W⁻sn) + a⁻(W⁻sp + W⁺sn)
        return ap * (vjp(wp, sp) + vjp(wn, sn)) + an * (vjp(wn, sp) + vjp(wp, sn))

    if name == "alphabeta":
        return spread(2 * R / st(zp), -1 * R / st(zn))
    if name == "zplus":
        return spread(R / st(zp), torch.zeros_like(R))
    gamma = 0.25
    zt = conv(a, W) + b.view(1, -1, 1, 1)
    positive = zt >= 0
    den = st(zt + gamma * torch.where(positive, zp, zn))
    s = R / den
    sp, sn = s * positive, s * ~positive
    return a * vjp(W, s) + gamma * spread(sp, sn)


def cpu_min(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rule", default="alphabeta", choices=["alphabeta", "zplus", "gamma"])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--in-channels", type=int, default=None, help="default: --channels")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--side", type=int, default=56)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--clipped", action="store_true", help="a ReLU merged: z = max(0, z)")
    p.add_argument("--signed", action="store_true", help="inputs of both signs")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check", action="store_true", help="compare with the float64 formula")
    p.add_argument("--pieces", action="store_true",
                   help="αβ: also time the W⁺ forward and the stacked vjp on their own")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = args.channels
    c_in = args.in_channels or c
    conv = nn.Conv2d(c_in, c, args.kernel, args.stride, args.kernel // 2, groups=args.groups,
                     bias=False)
    bn = nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.3)
    x = torch.randn(args.batch, c_in, args.side, args.side)
    a = x if args.signed else x.clamp(min=0)
    with torch.no_grad():
        z_true = bn(conv(a))
    z = z_true.clamp(min=0) if args.clipped else z_true
    grad = torch.randn_like(z)
    rule = {"alphabeta": rules.AlphaBeta(2.0, 1.0), "zplus": rules.ZPlus(),
            "gamma": rules.Gamma(0.25)}[args.rule]

    def run_rule() -> Tensor:
        op = make_op(conv, bn, args.clipped)
        return rule.propagate(op, a, z, grad)

    def run_gradient() -> Tensor:
        return make_op(conv, bn, args.clipped).vjp(a, grad)

    if args.check:
        op = make_op(conv.double(), bn.double(), args.clipped)
        W, b = op.weight, op.bias
        assert b is not None
        conv.float(), bn.float()
        ref = reference(args.rule, a.double(), W, b, z.double(), grad.double(),
                        args.groups, rule.stabilizer, args.stride)
        got = a * run_rule()
        err = float((got.double() - ref).abs().max() / ref.abs().max())
        print(f"max |R - R_float64| / max |R_float64| = {err:.2e}")
    runs = {"gradient": run_gradient, args.rule: run_rule}
    if args.pieces and args.rule == "alphabeta" and args.groups == 1:
        runs.update(alphabeta_kernels(make_op(conv, bn, args.clipped), a, z))
    for run in runs.values():  # warm (and fill the rho(W) cache)
        run()
    times = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name] = min(times[name], cpu_min(run, 1))
    ms = {name: 1e3 * t for name, t in times.items()}
    print(f"{args.rule} {'clipped ' if args.clipped else ''}{'signed' if args.signed else 'a>=0'}"
          f" c={c_in}->{c} k={args.kernel} s={args.stride} g={args.groups} "
          f"{args.side}x{args.side} batch {args.batch}: gradient {ms['gradient']:.1f} ms, "
          f"rule {ms[args.rule]:.1f} ms ({times[args.rule] / times['gradient']:.2f}x)")
    if "W+ forward" in ms:
        rest = ms[args.rule] - ms["W+ forward"] - ms["stacked vjp"]
        print(f"  W+ forward {ms['W+ forward']:.1f} ms, stacked vjp {ms['stacked vjp']:.1f} ms, "
              f"the rest {rest:.1f} ms ({rest / ms['gradient']:.2f}x the gradient)")


def alphabeta_kernels(op: LinearOp, a: Tensor, z: Tensor) -> dict[str, Callable[[], object]]:
    """The two kernels of αβ's floor on ``op``: the forward with ``W⁺`` and the stacked vjp,
    on the weights and inputs the rule uses (see ``AlphaBeta._stacked``)."""
    from relprop.rules import alphabeta

    stacked = rules.AlphaBeta()._stacked(op, a, z, bool(a.min() >= 0))
    assert stacked is not None, "αβ runs no stacked vjp here (grouped, or many signed channels)"
    x = a if stacked.shape[1] == a.shape[1] else alphabeta._signs_side_by_side(a)
    half = stacked[: stacked.shape[0] // 2]
    signal = torch.randn((z.shape[0], 2 * z.shape[1], *z.shape[2:]))
    return {"W+ forward": lambda: op.forward(x, half, op.bias),
            "stacked vjp": lambda: op.input_vjp(x, stacked, signal)}


if __name__ == "__main__":
    main()
