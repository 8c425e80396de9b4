"""Decoding against transformers' own warpers, token for token, and decoding in float32.

transformers' TopPLogitsWarper sorts ascending, takes the float32 cumulative softmax and removes
where it is <= 1 - p; its MinPLogitsWarper keeps float32 probabilities >= min_p * the largest.
logitops makes the same decisions exactly (in float64) on the same float32 logits, so the masks
must be equal except for tokens whose decision lies within float32 rounding of the boundary
(where transformers' float32 arithmetic decides) and ties at a cut (transformers splits a group of
equal logits in its sort's order; logitops keeps the group).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICES, EMULATION

import logitops

transformers = pytest.importorskip("transformers")

P_VALUES = [0.5, 0.9, 0.95, 0.99, 0.999]
# Relative distance from the boundary inside which transformers' float32 softmax / cumsum (a few
# ulp of relative error) may decide either way.
ROUNDING = 2.0**-21


def kept(out):
    return out > -math.inf


def exact_top_p(scores, top_p, min_tokens_to_keep=1):
    """The decision on the given scores made exactly: ascending float64 cumulative softmax
    through the end of each group of equal values, removed where <= 1 - p (rounded to the
    scores' dtype, as transformers' comparison rounds it). Returns the keep mask and each token's
    relative distance from the boundary."""
    threshold = float(torch.tensor(1 - top_p, dtype=scores.dtype))
    values, order = torch.sort(scores.double(), dim=-1)
    cumulative = torch.softmax(values, -1).cumsum(-1)
    # the cumulative mass at the end of each token's group of equal values
    group_end = torch.ones_like(values, dtype=torch.bool)
    group_end[..., :-1] = values[..., :-1] != values[..., 1:]
    at_end = torch.where(group_end, cumulative, torch.full_like(cumulative, math.inf))
    through_group = at_end.flip(-1).cummin(-1).values.flip(-1)
    keep = through_group > threshold
    keep |= values >= values[..., -min_tokens_to_keep, None]
    keep &= values > -math.inf
    distance = (through_group - threshold).abs() / threshold
    return (
        keep.scatter(-1, order, keep),
        distance.scatter(-1, order, distance),
    )


def exact_min_p(scores, min_p, min_tokens_to_keep=1):
    """exp(z - max) >= min_p (rounded to the scores' dtype) in float64; the relative distance."""
    cut = float(torch.tensor(min_p, dtype=scores.dtype))
    z = scores.double()
    ratio = (z - z.max(-1, keepdim=True).values).exp()
    keep = ratio >= cut
    keep |= z >= z.topk(min_tokens_to_keep, dim=-1).values[..., -1:]
    keep &= z > -math.inf
    return keep, (ratio - cut).abs() / max(cut, 1e-300)


def tied(scores):
    """Tokens whose value another token of the row shares."""
    values, order = torch.sort(scores, dim=-1)
    same = torch.zeros_like(values, dtype=torch.bool)
    same[..., 1:] |= values[..., 1:] == values[..., :-1]
    same[..., :-1] |= values[..., 1:] == values[..., :-1]
    return same.scatter(-1, order, same)


def assert_matches_transformers(ours, exact, distance, theirs, scores, what):
    ours, exact, theirs = ours.cpu(), exact.cpu(), theirs.cpu()
    wrong = ours != exact
    assert not wrong.any(), (
        f"{what}: {int(wrong.sum())} tokens differ from the exact decision, first at "
        f"{wrong.nonzero()[:5].tolist()}"
    )
    differ = (ours != theirs) & ~(distance.cpu() <= ROUNDING) & ~tied(scores.cpu())
    assert not differ.any(), (
        f"{what}: {int(differ.sum())} tokens differ from transformers away from the boundary "
        f"and from ties, in rows {differ.any(-1).nonzero().flatten().tolist()}"
    )


def scaled_rows(rows):
    """Fewer rows under CUDA emulation (one fiber per CUDA thread): the same vocabularies and
    boundaries, a fraction of the emulated blocks."""
    return max(2, rows // 8) if EMULATION else rows


def random_logits(rows, vocab, scale, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale).float().to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab", [32000, 128256])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_top_p_masks_equal_transformers(device, vocab, scale):
    logits = random_logits(scaled_rows(32), vocab, scale, device, seed=vocab + int(scale))
    for p in P_VALUES:
        ours = kept(logitops.top_p_filter(logits, p))
        exact, distance = exact_top_p(logits.cpu(), p)
        theirs = kept(transformers.TopPLogitsWarper(p)(None, logits.cpu()))
        assert_matches_transformers(ours, exact, distance, theirs, logits, f"p={p}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab", [32000, 128256])
def test_top_p_after_temperature_and_top_k_equals_transformers(device, vocab):
    # The warper chain of generate(temperature=0.7, top_k=2000, top_p=p, min_tokens_to_keep=3):
    # top-p renormalizes over top-k's survivors.
    logits = random_logits(scaled_rows(16), vocab, 2.0, device, seed=vocab)
    for p in P_VALUES:
        chain = transformers.LogitsProcessorList(
            [
                transformers.TemperatureLogitsWarper(0.7),
                transformers.TopKLogitsWarper(2000, min_tokens_to_keep=3),
                transformers.TopPLogitsWarper(p, min_tokens_to_keep=3),
            ]
        )
        theirs = kept(chain(None, logits.cpu()))
        ours = kept(
            logitops.filter_logits(
                logits, temperature=0.7, top_k=2000, top_p=p, min_tokens_to_keep=3
            )
        )
        after_top_k = transformers.TopKLogitsWarper(2000)(None, logits.cpu() / 0.7)
        exact, distance = exact_top_p(after_top_k, p, min_tokens_to_keep=3)
        assert_matches_transformers(ours, exact, distance, theirs, logits / 0.7, f"p={p}")


@pytest.mark.parametrize("device", DEVICES)
def test_top_p_per_row_equals_transformers(device):
    logits = random_logits(len(P_VALUES), 128256, 2.0, device, seed=5)
    ours = kept(
        logitops.top_p_filter(logits, torch.tensor(P_VALUES, dtype=torch.float64, device=device))
    )
    for r, p in enumerate(P_VALUES):
        exact, distance = exact_top_p(logits[r].cpu(), p)
        theirs = kept(transformers.TopPLogitsWarper(p)(None, logits[r : r + 1].cpu()))[0]
        assert_matches_transformers(ours[r], exact, distance, theirs, logits[r], f"p={p}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab", [32000, 128256])
def test_min_p_masks_equal_transformers(device, vocab):
    logits = random_logits(scaled_rows(16), vocab, 3.0, device, seed=vocab + 1)
    for min_p in (0.001, 0.01, 0.05, 0.1, 0.3, 0.9):
        ours = kept(logitops.min_p_filter(logits, min_p, min_tokens_to_keep=2))
        exact, distance = exact_min_p(logits.cpu(), min_p, min_tokens_to_keep=2)
        warper = transformers.MinPLogitsWarper(min_p, min_tokens_to_keep=2)
        theirs = kept(warper(None, logits.cpu()))
        assert_matches_transformers(ours, exact, distance, theirs, logits, f"min_p={min_p}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("min_p", [0.05, 0.1, 0.3])
def test_min_p_at_the_boundary_equals_transformers(device, min_p):
    # Tokens one float32 ulp apart across exp(z - max) = min_p: everything outside float32
    # rounding of the cut is decided as transformers decides it.
    center = torch.tensor(math.log(min_p), dtype=torch.float32)
    steps = [center]
    for direction in (math.inf, -math.inf):
        z = center
        for _ in range(60):
            z = torch.nextafter(z, torch.tensor(direction))
            steps.append(z)
    row = torch.stack([torch.tensor(0.0)] + steps).unsqueeze(0)
    ours = kept(logitops.min_p_filter(row.to(device), min_p))
    exact, distance = exact_min_p(row, min_p)
    theirs = kept(transformers.MinPLogitsWarper(min_p)(None, row))
    assert_matches_transformers(ours, exact, distance, theirs, row, f"min_p={min_p}")
    assert exact.sum() > 1 and (~exact).sum() > 1  # the sweep straddles the cut


@pytest.mark.parametrize("device", DEVICES)
def test_sampled_tokens_are_kept_by_transformers(device):
    # The race samples from exactly the kept set: no token transformers' top-p would remove.
    logits = random_logits(scaled_rows(64), 32000, 2.0, device, seed=9)
    for p in (0.9, 0.99):
        tokens = logitops.sample(logits, top_p=p, seed=torch.arange(len(logits), device=device))
        theirs = kept(transformers.TopPLogitsWarper(p)(None, logits.cpu()))
        assert theirs.gather(1, tokens.cpu().unsqueeze(1)).all()


# --- decoding in float32 whatever the logits' dtype -----------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_scaling_does_not_overflow(device):
    # x / T overflows float16 for three of these logits; in float32 token 3 has all the mass.
    logits = torch.tensor([[0, 19.7, 19.8, 30, 5]], dtype=torch.float16, device=device)
    tokens, logprobs = logitops.sample(
        logits, temperature=1e-4, seed=torch.tensor([1], device=device), return_logprobs=True
    )
    assert tokens.tolist() == [3] and logprobs.tolist() == [0.0]
    out = logitops.filter_logits(logits, temperature=1e-4, top_p=0.9)
    assert out.dtype == torch.float16
    assert kept(out).tolist() == [[False, False, False, True, False]]
    assert out[0, 3] == math.inf  # 3e5 is past float16's range: the value rounds to inf


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_scaling_creates_no_ties(device):
    # 1.7109375 / 1.7 and 1.71875 / 1.7 round to the same bfloat16 value; in float32 (as
    # generate() computes it) the second is larger, so top-k 1 keeps it alone.
    logits = torch.tensor([[1.7109375, 1.71875, 0.0, -1.0]], dtype=torch.bfloat16, device=device)
    scaled = logits / 1.7
    assert scaled[0, 0] == scaled[0, 1]  # the tie the old bf16 arithmetic made
    out = logitops.filter_logits(logits, temperature=1.7, top_k=1)
    assert kept(out).tolist() == [[False, True, False, False]]
    seeds = torch.arange(64, device=device)
    tokens = logitops.sample(logits.expand(64, -1), temperature=1.7, top_k=1, seed=seeds)
    assert (tokens == 1).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("order", ["hf", "vllm", "joint"])
def test_half_precision_decodes_as_float32(device, dtype, order):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(64, 3000, generator=g) * 4).to(dtype).to(device)
    bias = (torch.randn(3000, generator=g) * 1e-2).to(device)  # float32, below bf16's resolution
    setting = dict(temperature=0.7, top_k=200, top_p=0.9, min_p=0.01, logit_bias=bias, order=order)
    ours = logitops.filter_logits(logits, **setting)
    as_float32 = logitops.filter_logits(logits.float(), **setting)
    assert ours.dtype == dtype
    assert torch.equal(kept(ours), kept(as_float32))
    torch.testing.assert_close(ours, as_float32.to(dtype), rtol=0, atol=0)
    seeds = torch.arange(64, device=device)
    tokens, logprobs = logitops.sample(logits, seed=seeds, return_logprobs=True, **setting)
    tokens32, logprobs32 = logitops.sample(
        logits.float(), seed=seeds, return_logprobs=True, **setting
    )
    assert torch.equal(tokens, tokens32)
    torch.testing.assert_close(logprobs, logprobs32, rtol=0, atol=0)
    greedy = logitops.sample(logits, temperature=0.0, logit_bias=bias)
    assert torch.equal(greedy, (logits.float() + bias).argmax(-1))


def test_half_precision_matches_the_generate_warper_chain():
    # generate() upcasts the logits to float32 before its warpers.
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(16, 32000, generator=g) * 3).to(torch.bfloat16)
    chain = transformers.LogitsProcessorList(
        [
            transformers.TemperatureLogitsWarper(0.6),
            transformers.TopKLogitsWarper(500),
            transformers.TopPLogitsWarper(0.95),
        ]
    )
    scores = logits.float()
    theirs = kept(chain(None, scores))
    ours = kept(logitops.filter_logits(logits, temperature=0.6, top_k=500, top_p=0.95))
    exact, distance = exact_top_p(transformers.TopKLogitsWarper(500)(None, scores / 0.6), 0.95)
    assert_matches_transformers(ours, exact, distance, theirs, scores / 0.6, "bf16 chain")


@pytest.mark.parametrize("device", DEVICES)
def test_float64_parameters_reach_the_kernels_unrounded(device):
    # p = 0.9 and T = 0.7 as Python floats, not their float32 roundings: float64 logits get the
    # float64 warper chain's mask and values.
    logits = random_logits(8, 32000, 2.0, device, seed=11).double()
    ours = logitops.filter_logits(logits, temperature=0.7, top_p=0.9)
    chain = transformers.LogitsProcessorList(
        [transformers.TemperatureLogitsWarper(0.7), transformers.TopPLogitsWarper(0.9)]
    )
    theirs = chain(None, logits.cpu())
    exact, distance = exact_top_p(logits.cpu() / 0.7, 0.9)
    assert_matches_transformers(kept(ours), exact, distance, kept(theirs), logits / 0.7, "f64")
    torch.testing.assert_close(
        ours.cpu()[kept(ours.cpu())], (logits.cpu() / 0.7)[kept(ours.cpu())], rtol=0, atol=0
    )
