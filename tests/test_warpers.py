"""transformers' typical, epsilon and eta warpers (alone, chained with temperature / top-k / top-p /
min-p in transformers' order, and in sampling), compared to transformers' own classes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICES, DTYPES, EMULATION
from transformers.generation.logits_process import (
    EpsilonLogitsWarper as HfEpsilon,
)
from transformers.generation.logits_process import (
    EtaLogitsWarper as HfEta,
)
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.logits_process import (
    TypicalLogitsWarper as HfTypical,
)

import logitops
from logitops import processors

VOCABS = [1, 7, 1000] + ([] if EMULATION else [32000])


def random_logits(rows, vocab, dtype, scale=3.0):
    return (torch.randn(rows, vocab, dtype=torch.float64) * scale).to(dtype)


def hf_chain(
    logits,
    *,
    temperature=None,
    top_k=None,
    top_p=None,
    min_p=None,
    typical_p=None,
    epsilon_cutoff=None,
    eta_cutoff=None,
    min_tokens_to_keep=1,
    filter_value=-math.inf,
):
    """transformers' warpers in generate()'s order, on the scores generate() gives them (float32
    for half-precision logits)."""
    chain = []
    if temperature is not None:
        chain.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        chain.append(TopKLogitsWarper(top_k, filter_value, min_tokens_to_keep))
    if top_p is not None:
        chain.append(TopPLogitsWarper(top_p, filter_value, min_tokens_to_keep))
    if min_p is not None:
        chain.append(MinPLogitsWarper(min_p, filter_value, min_tokens_to_keep))
    if typical_p is not None:
        chain.append(HfTypical(typical_p, filter_value, min_tokens_to_keep))
    if epsilon_cutoff is not None:
        chain.append(HfEpsilon(epsilon_cutoff, filter_value, min_tokens_to_keep))
    if eta_cutoff is not None:
        chain.append(HfEta(eta_cutoff, filter_value, min_tokens_to_keep))
    scores = logits if logits.dtype == torch.float64 else logits.float()
    return LogitsProcessorList(chain)(None, scores)


def kept(out):
    return out > -math.inf


def assert_kept_equal(ours, logits, expected, what=""):
    """The kept sets are equal, except inside a group of equal logits that transformers splits
    (its sort orders ties arbitrarily at top-p's cut and at typical's min_tokens_to_keep-th
    position), which logitops keeps whole."""
    a, b = kept(ours), kept(expected)
    for r in range(a.shape[0]):
        x = logits[r].double()
        diff = (a[r] != b[r]).nonzero().flatten()
        for j in diff.tolist():
            group = x == x[j]
            split = bool(b[r][group].any()) and not bool(b[r][group].all())
            assert split and bool(a[r][group].all()), (
                f"{what}: row {r} token {j} kept={bool(a[r, j])}, transformers {bool(b[r, j])}"
            )


WARPERS = [
    ("typical_p", 0.2),
    ("typical_p", 0.5),
    ("typical_p", 0.95),
    ("epsilon_cutoff", 3e-4),
    ("epsilon_cutoff", 0.02),
    ("eta_cutoff", 3e-4),
    ("eta_cutoff", 0.05),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("min_tokens_to_keep", [1, 3])
def test_each_warper_matches_transformers(dtype, vocab, min_tokens_to_keep):
    logits = random_logits(3, vocab, dtype)
    for name, value in WARPERS:
        ours = logitops.filter_logits(
            logits, min_tokens_to_keep=min_tokens_to_keep, **{name: value}
        )
        ref = hf_chain(logits, min_tokens_to_keep=min_tokens_to_keep, **{name: value})
        assert_kept_equal(
            ours,
            logits,
            ref,
            what=f"{name}={value}",
        )
        # Kept values are the (upcast) logits themselves, rounded once to the logits' dtype.
        assert torch.equal(ours[kept(ours)], logits[kept(ours)])


CHAINS = [
    dict(top_k=50, typical_p=0.9, eta_cutoff=3e-3),
    dict(temperature=0.7, top_p=0.9, epsilon_cutoff=1e-3),
    dict(min_p=0.05, typical_p=0.6, epsilon_cutoff=1e-3, eta_cutoff=1e-3),
    dict(temperature=1.5, top_k=20, top_p=0.8, min_p=0.02, typical_p=0.3, eta_cutoff=0.01),
    dict(typical_p=0.4, epsilon_cutoff=0.05),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chain", range(len(CHAINS)))
@pytest.mark.parametrize("min_tokens_to_keep", [1, 2])
def test_chains_match_transformers(dtype, chain, min_tokens_to_keep):
    params = CHAINS[chain]
    logits = random_logits(4, 1000, dtype)
    ours = logitops.filter_logits(logits, min_tokens_to_keep=min_tokens_to_keep, **params)
    ref = hf_chain(logits, min_tokens_to_keep=min_tokens_to_keep, **params)
    assert_kept_equal(ours, logits, ref)


def test_typical_can_remove_the_most_likely_token():
    logits = torch.tensor([[0.4, 0.2, 0.2, 0.2]]).log()
    out = logitops.filter_logits(logits, typical_p=0.5)
    assert kept(out).tolist() == [[False, True, True, True]]
    assert_kept_equal(out, logits, hf_chain(logits, typical_p=0.5))
    # then epsilon and eta renormalize over those survivors (each 1/3, so 0.3 keeps all three)
    out = logitops.filter_logits(logits, typical_p=0.5, epsilon_cutoff=0.3, eta_cutoff=0.3)
    assert kept(out).tolist() == [[False, True, True, True]]
    assert_kept_equal(
        out, logits, hf_chain(logits, typical_p=0.5, epsilon_cutoff=0.3, eta_cutoff=0.3)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties(dtype):
    # Few distinct values: every cut falls on a group of equal logits.
    logits = torch.randint(-4, 3, (4, 64)).to(dtype)
    for name, value in WARPERS + [("epsilon_cutoff", 0.016), ("eta_cutoff", 0.2)]:
        for keep in (1, 5):
            ours = logitops.filter_logits(logits, min_tokens_to_keep=keep, **{name: value})
            ref = hf_chain(logits, min_tokens_to_keep=keep, **{name: value})
            assert_kept_equal(ours, logits, ref, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_neg_inf_entries_and_filter_value(dtype):
    logits = random_logits(3, 40, dtype)
    logits[0, ::3] = -math.inf
    logits[1, 1:] = -math.inf  # one finite token
    logits[2, :38] = -math.inf
    for name, value in WARPERS:
        for fill in (-math.inf, -100.0):
            ours = logitops.filter_logits(logits, filter_value=fill, **{name: value})
            ref = hf_chain(logits, filter_value=fill, **{name: value})
            # -inf logits become filter_value where transformers removes them, as it does
            expected = ref.to(dtype)
            assert torch.equal(ours, expected), f"{name}={value} filter_value={fill}"


def test_per_row_values_match_rows_one_at_a_time():
    logits = random_logits(4, 300, torch.float32)
    typical = torch.tensor([0.3, 1.0, 0.9, 0.5], dtype=torch.float64)
    eps = torch.tensor([0.0, 1e-3, 0.01, 0.0], dtype=torch.float64)
    eta = torch.tensor([2e-3, 0.0, 0.0, 0.02], dtype=torch.float64)
    ours = logitops.filter_logits(
        logits,
        top_k=torch.tensor([10, 300, 50, 100]),
        typical_p=typical,
        epsilon_cutoff=eps,
        eta_cutoff=eta,
    )
    for r in range(4):
        params = dict(top_k=[10, 300, 50, 100][r])
        if typical[r] < 1:
            params["typical_p"] = float(typical[r])
        if eps[r] > 0:
            params["epsilon_cutoff"] = float(eps[r])
        if eta[r] > 0:
            params["eta_cutoff"] = float(eta[r])
        assert_kept_equal(ours[r : r + 1], logits[r : r + 1], hf_chain(logits[r : r + 1], **params))
        one = logitops.filter_logits(logits[r], **params)
        assert torch.equal(one, ours[r])


def test_nan_rows():
    logits = random_logits(3, 20, torch.float32)
    logits[1, 4] = math.nan
    out = logitops.filter_logits(logits, typical_p=0.5, eta_cutoff=1e-3)
    assert out[1].isnan().all() and not out[[0, 2]].isnan().any()
    tokens = logitops.sample(logits, typical_p=0.5, epsilon_cutoff=1e-3, seed=1)
    assert tokens[1] == -1 and (tokens[[0, 2]] >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampling_yields_only_kept_tokens(dtype):
    rows = 6
    logits = random_logits(rows, 257, dtype)
    params = [
        dict(typical_p=0.3),
        dict(epsilon_cutoff=0.01),
        dict(eta_cutoff=0.01),
        dict(top_k=30, typical_p=0.5, eta_cutoff=0.003),
        dict(temperature=0.8, top_p=0.9, typical_p=0.7, epsilon_cutoff=0.002),
    ]
    draws = 8 if EMULATION else 64
    for p in params:
        filter_params = {k: v for k, v in p.items()}
        mask = kept(logitops.filter_logits(logits, **filter_params))
        seen = torch.zeros_like(mask)
        for s in range(draws):
            tokens, logprobs = logitops.sample(logits, seed=s, return_logprobs=True, **p)
            assert (tokens >= 0).all()
            assert mask[torch.arange(rows), tokens].all(), p
            # the log-probability is over the kept set, renormalized
            # (z in float32, as sample computes it, not rounded to the logits' dtype)
            z = (logits.float() / p.get("temperature", 1.0)).double().masked_fill(~mask, -math.inf)
            expected = z.log_softmax(-1)[torch.arange(rows), tokens]
            torch.testing.assert_close(logprobs.double(), expected, rtol=1e-5, atol=1e-5)
            seen[torch.arange(rows), tokens] = True
        if not EMULATION:
            assert seen.sum() > rows  # not a point mass everywhere


def test_sample_frequencies_follow_the_typical_set():
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    z = logitops.filter_logits(logits, typical_p=0.7)
    probs = z.softmax(-1)[0]
    n = 400 if EMULATION else 4000
    tokens = logitops.sample(logits.expand(n, -1), typical_p=0.7, seed=torch.arange(n))
    counts = torch.bincount(tokens, minlength=7).double()
    assert (counts[probs == 0] == 0).all()
    expected = probs.double() * n
    nz = expected > 0
    chi2 = float(((counts[nz] - expected[nz]) ** 2 / expected[nz]).sum())
    assert chi2 < 25.0  # 6 degrees of freedom at most: p ~ 3e-4


def test_processors_match_transformers_classes():
    logits = random_logits(3, 500, torch.float32)
    pairs = [
        (processors.TypicalLogitsWarper(0.6), HfTypical(0.6)),
        (
            processors.TypicalLogitsWarper(0.9, min_tokens_to_keep=4),
            HfTypical(0.9, min_tokens_to_keep=4),
        ),
        (processors.EpsilonLogitsWarper(1e-3), HfEpsilon(1e-3)),
        (processors.EpsilonLogitsWarper(0.1, -10.0, 3), HfEpsilon(0.1, -10.0, 3)),
        (processors.EtaLogitsWarper(1e-3), HfEta(1e-3)),
        (
            processors.EtaLogitsWarper(0.05, -5.0, 2, device="cpu"),
            HfEta(0.05, -5.0, 2, device="cpu"),
        ),
    ]
    for ours, ref in pairs:
        assert torch.equal(ours(None, logits), ref(None, logits)), type(ours).__name__
    # in a transformers list, after our own top-k
    chain = LogitsProcessorList(
        [processors.TopKLogitsWarper(40), processors.TypicalLogitsWarper(0.5)]
    )
    ref = LogitsProcessorList([TopKLogitsWarper(40), HfTypical(0.5)])
    assert torch.equal(chain(None, logits), ref(None, logits))
    # the fused filter with the GenerationConfig names
    fused = processors.LogitsFilter(top_k=40, typical_p=0.5, eta_cutoff=2e-3)
    ref = LogitsProcessorList([TopKLogitsWarper(40), HfTypical(0.5), HfEta(2e-3)])
    assert torch.equal(fused(None, logits), ref(None, logits))


@pytest.mark.parametrize(
    "make",
    [
        lambda cls: cls(0.0),
        lambda cls: cls(1.0),
        lambda cls: cls(-0.5),
        lambda cls: cls(0.5, min_tokens_to_keep=0),
    ],
)
@pytest.mark.parametrize(
    "ours,ref",
    [
        (processors.TypicalLogitsWarper, HfTypical),
        (processors.EpsilonLogitsWarper, HfEpsilon),
        (processors.EtaLogitsWarper, HfEta),
    ],
)
def test_processor_constructors_reject_what_transformers_rejects(make, ours, ref):
    with pytest.raises(ValueError):
        make(ref)
    with pytest.raises(ValueError):
        make(ours)


def test_off_values_change_nothing():
    logits = random_logits(3, 100, torch.float32)
    base = logitops.filter_logits(logits, top_k=20, top_p=0.9)
    same = logitops.filter_logits(
        logits, top_k=20, top_p=0.9, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0
    )
    assert torch.equal(base, same)
    seeds = torch.arange(3)
    assert torch.equal(
        logitops.sample(logits, top_k=20, seed=seeds),
        logitops.sample(logits, top_k=20, seed=seeds, typical_p=1.0, eta_cutoff=0.0),
    )


@pytest.mark.parametrize("order", ["vllm", "joint"])
def test_other_orders_apply_the_warpers_after_their_filters(order):
    logits = random_logits(3, 400, torch.float32)
    first = logitops.filter_logits(logits, top_k=50, min_p=0.01, order=order)
    ours = logitops.filter_logits(
        logits, top_k=50, min_p=0.01, order=order, typical_p=0.5, eta_cutoff=1e-3
    )
    ref = LogitsProcessorList([HfTypical(0.5), HfEta(1e-3)])(None, first)
    assert torch.equal(kept(ours), kept(ref))


# --- bad input ------------------------------------------------------------------------------

L = torch.randn(2, 10)

BAD_CALLS = [
    ("typical_p", ValueError, lambda: logitops.filter_logits(L, typical_p=0.0)),
    ("typical_p", ValueError, lambda: logitops.filter_logits(L, typical_p=1.5)),
    ("typical_p", ValueError, lambda: logitops.sample(L, typical_p=torch.tensor([0.5, 0.0]))),
    ("typical_p", TypeError, lambda: logitops.filter_logits(L, typical_p=torch.tensor([1, 1]))),
    ("epsilon_cutoff", ValueError, lambda: logitops.filter_logits(L, epsilon_cutoff=1.0)),
    ("epsilon_cutoff", ValueError, lambda: logitops.sample(L, epsilon_cutoff=-0.1)),
    ("eta_cutoff", ValueError, lambda: logitops.filter_logits(L, eta_cutoff=1.0)),
    ("eta_cutoff", ValueError, lambda: logitops.filter_logits(L, eta_cutoff=float("nan"))),
    (
        "eta_cutoff",
        ValueError,
        lambda: logitops.filter_logits(L, eta_cutoff=torch.tensor([0.1, 0.2, 0.3])),
    ),
    ("typical_p", ValueError, lambda: processors.TypicalLogitsWarper(1.0)),
    ("epsilon_cutoff", ValueError, lambda: processors.EpsilonLogitsWarper(0.0)),
    ("eta_cutoff", ValueError, lambda: processors.EtaLogitsWarper(1.0)),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()


@pytest.mark.parametrize("device", DEVICES)
def test_devices(device):
    logits = random_logits(2, 50, torch.float32).to(device)
    out = logitops.filter_logits(logits, typical_p=torch.tensor([0.5, 0.9], device=device))
    ref = torch.cat(
        [hf_chain(logits[i : i + 1].cpu(), typical_p=p) for i, p in enumerate((0.5, 0.9))]
    )
    assert torch.equal(kept(out).cpu(), kept(ref))
