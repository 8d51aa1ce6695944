"""LSTM/GRU: same outputs as the fused ops, conservation, and Arras et al.'s LRP in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import relprop
from relprop import composites as C
from relprop import rules as R


class Head(nn.Module):
    """A recurrent layer and a linear read-out of the last step's output."""

    def __init__(self, rnn: nn.LSTM | nn.GRU, classes: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.rnn = rnn
        width = rnn.hidden_size * (2 if rnn.bidirectional else 1)
        self.fc = nn.Linear(width, classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rnn(x)[0]
        return self.fc(out[:, -1] if self.rnn.batch_first else out[-1])


class PackedHead(nn.Module):
    """Runs packed sequences and reads out each sequence's last valid step."""

    def __init__(self, rnn: nn.LSTM | nn.GRU, lengths: list[int]) -> None:
        super().__init__()
        self.rnn, self.lengths = rnn, lengths
        self.fc = nn.Linear(rnn.hidden_size, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, self.lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        last = out[torch.arange(x.shape[0]), torch.tensor(self.lengths) - 1]
        return self.fc(last)


RNNS = {
    "lstm": lambda: nn.LSTM(4, 5, batch_first=True),
    "lstm_2layer_bidir": lambda: nn.LSTM(4, 5, num_layers=2, bidirectional=True),
    "gru": lambda: nn.GRU(4, 5, batch_first=True),
    "gru_2layer_bidir": lambda: nn.GRU(4, 5, num_layers=2, bidirectional=True,
                                       batch_first=True),
}


def _model(name: str, bias: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    rnn = RNNS[name]()
    if not bias:
        for param_name, param in rnn.named_parameters():
            if "bias" in param_name:
                nn.init.zeros_(param)
    return Head(rnn, bias=bias).double().eval()


def _input(model: nn.Module, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 6, 4) if model.rnn.batch_first else (6, 2, 4)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(RNNS))
def test_replay_gives_the_fused_ops_output_and_conserves(name: str) -> None:
    model = _model(name, bias=False)
    x = _input(model)
    expl = relprop.explain(model, x, target=1, composite=C.uniform(R.Epsilon(1e-12)))
    torch.testing.assert_close(expl.output, model(x), rtol=0, atol=1e-12)
    relevance = expl.relevance if model.rnn.batch_first else expl.relevance.transpose(0, 1)
    total = relevance.sum(dim=(1, 2))
    torch.testing.assert_close(total, expl.explained, rtol=1e-8, atol=1e-12)


def _arras_reference(model: Head, x: torch.Tensor, target: int, eps: float) -> torch.Tensor:
    """LRP for a one-layer batch-first LSTM, written as a loop over time (Arras et al. 2017).

    ε on the linear maps (the read-out and the gate pre-activation of the cell input g),
    identity through tanh, signal-take-all at gate products, LRP-0 at the cell-state sum.
    """
    rnn = model.rnn
    w = torch.cat([rnn.weight_ih_l0, rnn.weight_hh_l0], dim=1).detach()
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach()
    hidden = rnn.hidden_size
    batch, steps, _ = x.shape

    def stab(z: torch.Tensor) -> torch.Tensor:
        return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)

    h = torch.zeros(batch, hidden, dtype=x.dtype)
    c = torch.zeros_like(h)
    saved = []
    for t in range(steps):
        a = torch.cat([x[:, t], h], dim=1)
        pre = a @ w.T + b
        i, f, g, o = pre.chunk(4, dim=1)
        i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
        c_prev, c = c, torch.sigmoid(pre[:, hidden:2 * hidden]) * c + i * torch.tanh(g)
        saved.append((a, pre[:, 2 * hidden:3 * hidden], f * c_prev, i * torch.tanh(g), c))
        h = o * torch.tanh(c)
    fc_w, fc_b = model.fc.weight[target].detach(), model.fc.bias[target].detach()
    z_out = h @ fc_w + fc_b
    r_h = h * fc_w / stab(z_out)[:, None] * z_out[:, None]
    r_c = torch.zeros_like(r_h)
    r_x = torch.zeros_like(x)
    w_g = w[2 * hidden:3 * hidden]
    for t in reversed(range(steps)):
        a, pre_g, kept, written, c_t = saved[t]
        r_c = r_c + r_h  # h = o * tanh(c): the gate o takes nothing, tanh is the identity
        share = r_c / torch.where(c_t == 0, 1.0, c_t)
        r_c_prev, r_g = kept * share, written * share  # LRP-0 at c = f c' + i g
        r_a = a * ((r_g / stab(pre_g)) @ w_g)  # ε on the g rows of [x, h] -> pre
        r_x[:, t] = r_a[:, :x.shape[2]]
        r_h, r_c = r_a[:, x.shape[2]:], r_c_prev
    return r_x


def test_lstm_matches_a_loop_over_time_reference() -> None:
    model = _model("lstm", bias=True, seed=3)
    x = _input(model, seed=4)
    eps = 0.01
    expl = relprop.explain(model, x, target=2, composite=C.uniform(R.Epsilon(eps)))
    torch.testing.assert_close(expl.relevance, _arras_reference(model, x, 2, eps))


def test_packed_sequences_ignore_padding() -> None:
    torch.manual_seed(5)
    rnn = nn.LSTM(4, 5, batch_first=True)
    lengths = [6, 3]
    model = PackedHead(rnn, lengths).double().eval()
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    comp = C.uniform(R.Epsilon(1e-9))
    expl = relprop.explain(model, x, target=0, composite=comp)
    assert torch.all(expl.relevance[1, 3:] == 0)
    short = PackedHead(rnn, [3]).double().eval()
    short.fc = model.fc
    alone = relprop.explain(short, x[1:, :3], target=0, composite=comp)
    torch.testing.assert_close(expl.relevance[1, :3], alone.relevance[0])


def _gru_reference(model: Head, x: torch.Tensor, target: int, eps: float) -> torch.Tensor:
    """LRP for a one-layer batch-first GRU as a loop over time: ε on the linear maps, identity
    through tanh, the gates r, z and 1 − z take nothing, LRP-0 at the sums."""
    rnn = model.rnn
    w_ih, w_hh = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach()
    b_ih, b_hh = rnn.bias_ih_l0.detach(), rnn.bias_hh_l0.detach()
    size = rnn.hidden_size
    batch, steps, features = x.shape

    def stab(z: torch.Tensor) -> torch.Tensor:
        return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)

    def part(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a / torch.where(b == 0, 1.0, b)

    h = torch.zeros(batch, size, dtype=x.dtype)
    saved = []
    for t in range(steps):
        gi, gh = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = torch.sigmoid(gi[:, :size] + gh[:, :size])
        z = torch.sigmoid(gi[:, size:2 * size] + gh[:, size:2 * size])
        pre_n = gi[:, 2 * size:] + r * gh[:, 2 * size:]
        n = torch.tanh(pre_n)
        new = (1 - z) * n + z * h
        saved.append((h, gi[:, 2 * size:], r * gh[:, 2 * size:], gh[:, 2 * size:], pre_n,
                      (1 - z) * n, z * h, new))
        h = new
    fc_w, fc_b = model.fc.weight[target].detach(), model.fc.bias[target].detach()
    z_out = h @ fc_w + fc_b
    r_h = h * fc_w / stab(z_out)[:, None] * z_out[:, None]
    r_x = torch.zeros_like(x)
    for t in reversed(range(steps)):
        h_prev, gi_n, gated, gh_n, pre_n, kept_n, kept_h, new = saved[t]
        r_n, r_h_prev = kept_n * part(r_h, new), kept_h * part(r_h, new)  # LRP-0 at the sum
        r_gi_n, r_gh_n = gi_n * part(r_n, pre_n), gated * part(r_n, pre_n)  # r * gh_n: all to gh_n
        r_x[:, t] = x[:, t] * ((r_gi_n / stab(gi_n)) @ w_ih[2 * size:])
        r_h = r_h_prev + h_prev * ((r_gh_n / stab(gh_n)) @ w_hh[2 * size:])
    return r_x


def test_gru_matches_a_loop_over_time_reference() -> None:
    model = _model("gru", bias=True, seed=6)
    x = _input(model, seed=7)
    expl = relprop.explain(model, x, target=0, composite=C.uniform(R.Epsilon(0.01)))
    torch.testing.assert_close(expl.relevance, _gru_reference(model, x, 0, 0.01))


def test_ledger_and_layers_through_time() -> None:
    model = _model("lstm", bias=False)
    x = _input(model)
    expl = relprop.explain(model, x, target=0, composite=C.uniform(R.Epsilon(1e-12)),
                           record=True)
    steps = [e for e in expl.conservation if e.name.startswith("rnn:linear")]
    assert len(steps) == x.shape[1]  # one linear call per time step, each in the ledger
    assert {"rnn[0]", "fc", "<model>"} <= set(expl.layers)  # h_n is unused: no relevance
    for entry in expl.conservation:
        assert max(abs(a) for a in entry.absorbed) < 1e-9


def test_empty_sequences_are_refused() -> None:
    model = _model("lstm")
    with pytest.raises(relprop.InvalidInputError, match="empty sequence"):
        relprop.explain(model, torch.zeros(2, 0, 4, dtype=torch.float64), target=0)


def test_projections_are_refused() -> None:
    model = Head(nn.LSTM(4, 6, proj_size=2, batch_first=True))
    model.fc = nn.Linear(2, 3)
    model.eval()
    with pytest.raises(relprop.UnsupportedOperationError, match="proj_size"):
        relprop.explain(model, torch.randn(1, 3, 4), target=0)
