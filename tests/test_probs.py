"""Probabilities in and out (logitops.functional.probs) against float64 oracles written from the
semantics: the temperature softmax, renormalized top-k / top-p / min-p probabilities (the keep
mask of tests/reference.py's transformers warper chain on log(p)) and sampling from
probabilities (the same draw as logitops.sample on log(p), and chi-square tests of the
frequencies with fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DTYPES, EMULATION, assert_close
from reference import filter_reference

import logitops


# Chi-square critical value at p = 1e-6 for k - 1 degrees of freedom (Wilson-Hilferty), so that
# a correct sampler fails one seed in a million: the seeds are fixed, so these cannot flake.
def chi2_critical(dof: int, z: float = 4.753) -> float:
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    expected = probs.double() * counts.sum()
    mask = expected > 0
    assert counts[~mask].sum() == 0, "drew a token of probability 0"
    stat = ((counts[mask].double() - expected[mask]) ** 2 / expected[mask]).sum().item()
    return stat, int(mask.sum()) - 1


def random_probs(rows, vocab, dtype=torch.float32, zeros=0.3):
    p = torch.rand(rows, vocab, dtype=torch.float64) ** 3
    p[torch.rand(rows, vocab) < zeros] = 0
    p[:, 0] += 1e-3  # at least one token
    return (p / p.sum(-1, keepdim=True)).to(dtype)


# --- softmax --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 1000)])
def test_softmax_matches_float64(dtype, shape):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    x[0, 0] = -math.inf
    temperature = torch.tensor([0.7, 1.0, 2.5][: shape[0]], dtype=torch.float64)
    out = logitops.softmax(x, temperature=temperature)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected = torch.softmax(x.double() / temperature.unsqueeze(1), -1)
    if shape == (1, 1):
        expected = torch.full_like(expected, math.nan)  # a row of only -inf
    tol_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert_close(out, expected, tol_dtype, what="softmax")


def test_softmax_non_finite_rows():
    x = torch.randn(4, 9)
    x[0, 3] = math.nan
    x[1] = -math.inf
    x[2, 1] = math.inf
    out = logitops.softmax(x, temperature=0.5)
    assert out[:3].isnan().all()
    assert_close(out[3], torch.softmax(x[3].double() / 0.5, -1), torch.float32)


@pytest.mark.emulation_skip("vocab 32000")
def test_softmax_large_vocab_and_strided_rows():
    x = torch.randn(3, 64000)[:, ::2]
    assert_close(logitops.softmax(x, 0.8), torch.softmax(x.double() / 0.8, -1), torch.float32)


# --- renormalized probabilities ---------------------------------------------------------------


def renorm_oracle(p, **filters):
    out = torch.zeros(p.shape, dtype=torch.float64)
    z = p.double().log()
    for i in range(p.shape[0]):
        row = {k: (v[i].item() if isinstance(v, torch.Tensor) else v) for k, v in filters.items()}
        if row.get("top_p") == 1.0:
            del row["top_p"]  # off
        keep, ambiguous = filter_reference(z[i], **row)
        kept = p[i].double() * keep
        out[i] = kept / kept.sum()
        assert not ambiguous.any(), "a test row sits on a cut: pick another seed"
    return out


FILTER_CASES = [
    dict(top_k=3),
    dict(top_p=0.6),
    dict(min_p=0.2),
    dict(top_k=5, top_p=0.7, order="hf"),
    dict(top_k=5, top_p=0.7, min_p=0.05, order="vllm"),
    dict(top_k=5, top_p=0.7, order="joint"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(FILTER_CASES)))
def test_renorm_probs_matches_oracle(dtype, case):
    filters = dict(FILTER_CASES[case])
    p = random_probs(3, 33, dtype)
    out = logitops.renorm_probs(p, **filters)
    assert out.dtype == dtype
    assert_close(out, renorm_oracle(p, **filters), dtype, what=str(filters))


def test_renorm_per_row_parameters_and_unnormalized_rows():
    p = random_probs(3, 20).double() * torch.tensor([[1.0], [1e-20], [7.0]], dtype=torch.float64)
    k = torch.tensor([1, 4, 20])
    top_p = torch.tensor([1.0, 0.5, 0.9], dtype=torch.float64)
    out = logitops.renorm_probs(p, top_k=k, top_p=top_p)
    assert_close(out, renorm_oracle(p, top_k=k, top_p=top_p), torch.float64)


def test_renorm_ties_at_the_cut_are_kept_and_flashinfer_names():
    p = torch.tensor([[0.1, 0.3, 0.3, 0.2, 0.1]])
    torch.testing.assert_close(
        logitops.top_k_renorm_probs(p, 1), torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0]])
    )
    # transformers' rule: [.5, .3, .1, .1] at p = .8 keeps two.
    # (In float32, as transformers decides it; in float64 0.1 + 0.1 > (1 - 0.8) * 1.)
    q = torch.tensor([0.5, 0.3, 0.1, 0.1])
    torch.testing.assert_close(
        logitops.top_p_renorm_probs(q, 0.8), torch.tensor([0.625, 0.375, 0, 0])
    )


def test_renorm_invalid_rows_are_nan():
    p = random_probs(5, 9)
    p[0, 2] = -0.1
    p[1, 3] = math.nan
    p[2, 4] = math.inf
    p[3] = 0
    out = logitops.renorm_probs(p, top_k=2)
    assert out[:4].isnan().all()
    assert_close(out[4:], renorm_oracle(p[4:], top_k=2), torch.float32)


def test_vocab_one():
    p = torch.tensor([[0.3], [1.0]])
    torch.testing.assert_close(logitops.renorm_probs(p, top_p=0.1), torch.ones(2, 1))
    assert logitops.sample_from_probs(p, seed=3).tolist() == [0, 0]


def test_top_k_mask_logits_is_filter_logits():
    x = torch.randn(3, 50)
    torch.testing.assert_close(logitops.top_k_mask_logits(x, 5), logitops.filter_logits(x, top_k=5))


# --- sampling from probabilities --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(FILTER_CASES)))
def test_sample_from_probs_is_sample_on_log_probs(dtype, case):
    filters = dict(FILTER_CASES[case])
    p = random_probs(3, 40, dtype)
    seeds = torch.tensor([5, 6, 7])
    tokens = logitops.sample_from_probs(p, seed=seeds, **filters)
    z = p.to(torch.float64 if dtype == torch.float64 else torch.float32)
    z = z.double().log().to(z.dtype)
    assert torch.equal(tokens, logitops.sample(z, seed=seeds, **filters))
    keep = torch.stack([filter_reference(p[i].double().log(), **filters)[0] for i in range(3)])
    assert keep.gather(1, tokens.unsqueeze(1)).all()


def test_sample_from_probs_seeds_are_batch_invariant():
    p = random_probs(4, 30)
    seeds = torch.tensor([11, 12, 13, 14])
    full = logitops.sample_from_probs(p, top_p=0.9, seed=seeds)
    for i in range(4):
        one = logitops.sample_from_probs(p[i : i + 1], top_p=0.9, seed=seeds[i : i + 1])
        assert one.item() == full[i].item()
    assert torch.equal(full, logitops.sample_from_probs(p, top_p=0.9, seed=seeds))


def test_sample_from_probs_invalid_rows_give_minus_one():
    p = random_probs(5, 9)
    p[0, 2] = -0.1
    p[1, 3] = math.nan
    p[2, 4] = math.inf
    p[3] = 0
    tokens = logitops.sample_from_probs(p, seed=1)
    assert tokens[:4].tolist() == [-1, -1, -1, -1]
    assert 0 <= tokens[4] < 9


@pytest.mark.parametrize(
    "name,filters",
    [
        ("plain", {}),
        ("top_k", dict(top_k=3)),
        ("top_p", dict(top_p=0.75)),
        ("min_p", dict(min_p=0.3)),
        ("top_k_top_p", dict(top_k=4, top_p=0.8, order="hf")),
        ("joint", dict(top_k=4, top_p=0.8, order="joint")),
    ],
)
def test_sample_from_probs_frequencies_chi_square(name, filters):
    draws = 4000 if EMULATION else 40000
    vocab = 7
    base = torch.tensor([0.3, 0.05, 0.2, 0.0, 0.15, 0.1, 0.2], dtype=torch.float64) * 3.0
    p = base.float().expand(draws, vocab).contiguous()  # unnormalized on purpose
    tokens = logitops.sample_from_probs(p, seed=torch.arange(draws) * 7919 + 1, **filters)
    counts = torch.bincount(tokens, minlength=vocab)
    expected = renorm_oracle(base.unsqueeze(0), **filters)[0]
    stat, dof = chi_square(counts, expected)
    if dof > 0:
        assert stat < chi2_critical(dof), (name, counts.tolist(), expected.tolist())
    else:
        assert counts[expected > 0].item() == draws


def test_flashinfer_named_samplers():
    p = random_probs(3, 25)
    seeds = torch.tensor([1, 2, 3])
    same = lambda a, **f: torch.equal(a, logitops.sample_from_probs(p, seed=seeds, **f))  # noqa: E731
    assert same(logitops.sampling_from_probs(p, seed=seeds))
    assert same(logitops.top_k_sampling_from_probs(p, 4, seed=seeds), top_k=4)
    assert same(logitops.top_p_sampling_from_probs(p, 0.5, seed=seeds), top_p=0.5)
    assert same(logitops.min_p_sampling_from_probs(p, 0.2, seed=seeds), min_p=0.2)
    assert same(logitops.top_k_top_p_sampling_from_probs(p, 4, 0.5, seed=seeds), top_k=4, top_p=0.5)
    assert same(
        logitops.top_k_top_p_sampling_from_probs(p, 4, 0.5, filter_apply_order="joint", seed=seeds),
        top_k=4,
        top_p=0.5,
        order="joint",
    )


@pytest.mark.emulation_skip("vocab 32000")
def test_large_vocab_renorm_and_sample():
    p = torch.softmax(torch.randn(3, 32000) * 2, -1)
    out = logitops.renorm_probs(p, top_k=50, top_p=0.9)
    assert_close(out, renorm_oracle(p, top_k=50, top_p=0.9), torch.float32)
    tokens = logitops.sample_from_probs(p, top_k=50, top_p=0.9, seed=torch.tensor([1, 2, 3]))
    assert (out.gather(1, tokens.unsqueeze(1)) > 0).all()


L = torch.rand(2, 5)

BAD_CALLS = [
    ("probs", TypeError, lambda: logitops.sample_from_probs(L.long())),
    ("probs", ValueError, lambda: logitops.renorm_probs(torch.rand(2, 3, 4))),
    ("top_k", ValueError, lambda: logitops.top_k_renorm_probs(L, 0)),
    ("top_p", ValueError, lambda: logitops.top_p_sampling_from_probs(L, 1.5)),
    ("min_p", ValueError, lambda: logitops.min_p_sampling_from_probs(L, -0.5)),
    ("order", ValueError, lambda: logitops.renorm_probs(L, top_k=2, order="top_k_first")),
    (
        "filter_apply_order",
        ValueError,
        lambda: logitops.top_k_top_p_sampling_from_probs(L, 2, 0.5, filter_apply_order="x"),
    ),
    ("seed", ValueError, lambda: logitops.sampling_from_probs(L, seed=torch.tensor([1.0, 2.0]))),
    ("temperature", ValueError, lambda: logitops.softmax(L, temperature=0.0)),
    ("logits", TypeError, lambda: logitops.softmax(L.long())),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()
