"""Exact identities of the pure tensor functions."""

import math

import pytest
import torch
from conftest import same_bits

from rayrejuv.arch import Axis
from rayrejuv.method.entropy import select_target_positions, token_entropy
from rayrejuv.method.fusion import fuse, fuse_into
from rayrejuv.method.reset import neuron_slice, reset
from rayrejuv.method.selection import (
    AggregateSelector,
    UnionSelector,
    reset_count,
    token_relevance,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fusion_endpoints_are_exact(dtype):
    g = torch.Generator().manual_seed(0)
    sft, base = (torch.randn(33, 17, generator=g).to(dtype) for _ in range(2))
    assert same_bits(fuse(sft, base, 1.0).to(dtype), sft)
    assert same_bits(fuse(sft, base, 0.0).to(dtype), base)


def test_fusion_is_eq1_in_float32():
    g = torch.Generator().manual_seed(1)
    sft, base = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    for alpha in (0.4, 0.5, 0.7):
        out = fuse(sft.to(torch.bfloat16), base.to(torch.bfloat16), alpha)
        assert out.dtype == torch.float32
        ref = alpha * sft.to(torch.bfloat16).double() + (1 - alpha) * base.to(torch.bfloat16).double()
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-6)


def _fused_base():
    g = torch.Generator().manual_seed(2)
    return torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)


def _reset_slices(fused, base, idx, axis, omega):
    """What the pipeline does: Eq. 5 on the neuron slices, everything else kept."""
    out = fused.clone()
    sl = neuron_slice(axis, idx, out.ndim)
    out[sl] = reset(fused[sl], base[sl], omega)
    return out, sl


@pytest.mark.parametrize("axis", [Axis.ROW, Axis.COL])
def test_reset_omega_one_puts_base_exactly_in_the_slices_and_nowhere_else(axis):
    fused, base = _fused_base()
    idx = torch.tensor([1, 3])
    out, sl = _reset_slices(fused, base, idx, axis, omega=1.0)
    assert sl == ((idx,) if axis is Axis.ROW else (slice(None), idx))
    assert same_bits(out[sl], base[sl])
    keep = torch.ones_like(fused, dtype=torch.bool)
    keep[sl] = False
    assert same_bits(out[keep], fused[keep])


def test_reset_omega_zero_changes_nothing_and_omega_mixes():
    fused, base = _fused_base()
    idx = torch.tensor([0, 4])
    assert same_bits(_reset_slices(fused, base, idx, Axis.ROW, omega=0.0)[0], fused)
    out, _ = _reset_slices(fused, base, idx, Axis.COL, omega=0.25)
    torch.testing.assert_close(out[:, idx], 0.25 * base[:, idx] + 0.75 * fused[:, idx], rtol=0, atol=1e-6)


def test_reset_of_a_bias_uses_entries():
    out, _ = _reset_slices(torch.zeros(6), torch.arange(6.0), torch.tensor([2, 5]), Axis.COL, omega=1.0)
    assert out.tolist() == [0, 0, 2, 0, 0, 5]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
def test_chunked_fusion_is_bit_identical_to_one_shot(dtype, chunk):
    g = torch.Generator().manual_seed(4)
    sft, base = (torch.randn(37, 29, generator=g).to(dtype) for _ in range(2))
    for alpha in (0.0, 0.45, 1.0):
        out = torch.empty_like(sft)
        lo, hi = fuse_into(out, sft, base, alpha, chunk=chunk)
        ref = fuse(sft, base, alpha)
        assert same_bits(out, ref.to(dtype))
        assert float(lo) == float(ref.min()) and float(hi) == float(ref.max())
    base[3, 4] = float("nan")
    lo, hi = fuse_into(torch.empty_like(sft), sft, base, 0.5, chunk=chunk)
    assert hi.isnan() and lo.isnan()


def test_entropy_on_hand_made_distributions():
    V = 7
    uniform = torch.zeros(V)
    one_hot = torch.full((V,), -1e4)
    one_hot[3] = 0
    two = torch.tensor([0.0, 0.0] + [-1e4] * (V - 2))
    h = token_entropy(torch.stack([uniform, one_hot, two]))
    torch.testing.assert_close(h, torch.tensor([math.log(V), 0.0, math.log(2)]), rtol=0, atol=1e-6)
    p = torch.tensor([0.5, 0.25, 0.25])
    torch.testing.assert_close(token_entropy(p.log()), -(p * p.log()).sum(), rtol=0, atol=1e-7)


def test_target_positions_are_top_gap_inside_the_response():
    h_sft = torch.tensor([[0.1, 0.1, 0.9, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    h_base = torch.tensor([[5.0, 0.1, 0.1, 0.1, 0.3], [0.0, 0.5, 0.1, 0.0, 0.0]])
    mask = torch.tensor([[False, True, True, True, True], [False, False, True, True, False]])
    pos, valid = select_target_positions(h_sft, h_base, mask, n=3)
    assert pos[0].tolist() == [2, 4, 3]  # gaps 0.8, 0.3, 0.1; position 0 (gap 4.9) is the prompt
    assert valid[0].tolist() == [True, True, True]
    assert pos[1, :2].tolist() == [2, 3] and valid[1].tolist() == [True, True, False]


def test_relevance_rows_sum_to_one_and_sign_modes():
    s = torch.tensor([[2.0, -1.0, 1.0], [0.0, 0.0, 0.0]])
    r = token_relevance(s, "abs")
    torch.testing.assert_close(r[0], torch.tensor([0.5, 0.25, 0.25]))
    assert r[1].abs().sum() == 0
    torch.testing.assert_close(token_relevance(s, "positive")[0], torch.tensor([2 / 3, 0.0, 1 / 3]))


@pytest.mark.parametrize("rho,m", [(0.01, 1152), (0.05, 1000), (0.005, 70000), (0.2, 7)])
def test_aggregate_selects_round_rho_m(rho, m):
    count = reset_count(rho, m)
    assert count == max(1, round(rho * m))
    sel = AggregateSelector(m, count)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        sel.update(token_relevance(torch.randn(4, m, generator=g), "abs"))
    chosen = sel.select()
    assert chosen.numel() == count
    assert set(chosen.tolist()) == set(sel.relevance_sum.topk(count).indices.tolist())


def test_union_is_the_literal_union_of_per_token_tops():
    rel = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.2, 0.8], [0.7, 0.0, 0.3, 0.0]])
    sel = UnionSelector(4, count=1)
    sel.update(rel)
    assert sel.select().tolist() == [0, 3]
