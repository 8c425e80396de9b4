"""Filtering and sampling: masks equal to transformers' warpers, sampling statistics, seeds."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICES, EMULATION
from reference import filter_reference, hf_min_p, hf_top_k, hf_top_p

import logitops

VOCABS = [7, 1000, 128256]
LOW_PRECISION = [torch.float32, torch.bfloat16, torch.float16]


def random_logits(rows, vocab, dtype, device, scale=3.0):
    return (torch.randn(rows, vocab, dtype=torch.float64) * scale).to(dtype).to(device)


def kept(out):
    return out > -math.inf


def assert_masks_equal(ours, expected, ambiguous=None, what=""):
    diff = ours != expected
    if ambiguous is not None:
        diff &= ~ambiguous
    if diff.any():
        idx = diff.nonzero()[:5].tolist()
        raise AssertionError(f"{what}: {int(diff.sum())} tokens differ, first at {idx}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("min_tokens_to_keep", [1, 3])
def test_top_k_matches_hf(device, dtype, vocab, min_tokens_to_keep):
    logits = random_logits(4, vocab, dtype, device)
    ks = [1, 2, 50, vocab, vocab + 5]
    for k in ks:
        ours = logitops.top_k_filter(logits, k, min_tokens_to_keep=min_tokens_to_keep)
        ref = hf_top_k(logits.float(), k, min_tokens_to_keep=min_tokens_to_keep)
        assert_masks_equal(kept(ours), kept(ref), what=f"k={k}")
        # kept values are the logits themselves
        torch.testing.assert_close(ours[kept(ours)], logits[kept(ours)], rtol=0, atol=0)
    per_row = torch.tensor([1, 5, 17, vocab], device=device)
    ours = logitops.top_k_filter(logits, per_row)
    for r in range(4):
        assert_masks_equal(kept(ours[r]), kept(hf_top_k(logits[r].float(), int(per_row[r]))))


@pytest.mark.parametrize("device", DEVICES)
def test_top_k_keeps_ties_at_the_kth_value(device):
    logits = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0]], device=device)
    out = logitops.top_k_filter(logits, 2)
    assert kept(out).tolist() == [[True, True, True, True, False, False]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("vocab", VOCABS)
def test_top_p_matches_hf(device, dtype, vocab):
    logits = random_logits(4, vocab, dtype, device)
    for p in (0.0, 0.3, 0.9, 0.999, 1.0):
        ours = logitops.top_p_filter(logits, p, min_tokens_to_keep=2)
        for r in range(4):
            expected, ambiguous = filter_reference(
                logits[r].double(), top_p=p, min_tokens_to_keep=2
            )
            assert_masks_equal(kept(ours[r]), expected, ambiguous, what=f"p={p} row {r}")
    per_row = torch.tensor([0.1, 0.5, 0.9, 0.95], device=device)
    ours = logitops.top_p_filter(logits, per_row)
    for r in range(4):
        expected, ambiguous = filter_reference(logits[r].double(), top_p=float(per_row[r]))
        assert_masks_equal(kept(ours[r]), expected, ambiguous)


@pytest.mark.parametrize("device", DEVICES)
def test_top_p_boundary_hf_18976(device):
    # HF #18976 / #18984, transformers' own test_top_p_dist_warper: [.5, .3, .1, .1] with p = .8
    # reaches .8 after two tokens, so the third is not needed: two tokens are kept (float32, as
    # generate() runs its warpers); [.15, .3, .3, .25] keeps three.
    probs = torch.tensor([[0.3, 0.1, 0.1, 0.5], [0.15, 0.3, 0.3, 0.25]])
    logits = probs.log().to(device)
    expected = [[True, False, False, True], [False, True, True, True]]
    assert kept(logitops.top_p_filter(logits, 0.8)).tolist() == expected
    assert kept(hf_top_p(logits.cpu(), 0.8)).tolist() == expected
    transformers = pytest.importorskip("transformers")
    theirs = transformers.TopPLogitsWarper(0.8)(None, logits.cpu())
    assert kept(theirs).tolist() == expected
    # Away from float rounding, the same rule in float64: the crossing group (two equal tokens)
    # is kept just above .8 and not just below it.
    row = probs[:1].double().log().to(device)
    for p, mask in ((0.8 - 1e-12, [True, False, False, True]), (0.8 + 1e-12, [True] * 4)):
        assert kept(logitops.top_p_filter(row, p)).tolist() == [mask]
    assert kept(logitops.top_p_filter(logits, 0.81)).tolist() == [[True] * 4, [False] + [True] * 3]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("vocab", VOCABS)
def test_min_p_matches_hf(device, dtype, vocab):
    logits = random_logits(4, vocab, dtype, device)
    for min_p in (0.0, 0.05, 0.3, 1.0):
        ours = logitops.min_p_filter(logits, min_p, min_tokens_to_keep=2)
        for r in range(4):
            expected, ambiguous = filter_reference(
                logits[r].double(), min_p=min_p, min_tokens_to_keep=2
            )
            assert_masks_equal(kept(ours[r]), expected, ambiguous, what=f"min_p={min_p}")
    assert kept(hf_min_p(logits.float(), 0.3)).sum() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ["hf", "vllm", "joint"])
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_filter_logits_orders_match_reference(device, order, dtype):
    vocab = 3000
    logits = random_logits(6, vocab, dtype, device, scale=2.0)
    bias = torch.zeros(vocab, dtype=dtype, device=device)
    bias[:10] = 4.0
    settings = [
        dict(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05),
        dict(temperature=1.3, top_k=500, top_p=0.5),
        dict(top_p=0.95, min_p=0.2),
        dict(temperature=0.5, top_k=3),
    ]
    for setting in settings:
        ours = logitops.filter_logits(logits, logit_bias=bias, order=order, **setting)
        assert ours.dtype == dtype
        # computed in float32 (as generate() upcasts the logits), rounded to the dtype at the end
        biased = logits.float() + bias.float()
        for r in range(logits.shape[0]):
            row = biased[r]
            if "temperature" in setting:
                row = row / setting["temperature"]
            ref_setting = {k: v for k, v in setting.items() if k != "temperature"}
            expected, ambiguous = filter_reference(row.double(), order=order, **ref_setting)
            assert_masks_equal(kept(ours[r]), expected, ambiguous, what=f"{order} {setting}")
            torch.testing.assert_close(
                ours[r][kept(ours[r])], row.to(dtype)[kept(ours[r])], rtol=0, atol=0
            )


@pytest.mark.parametrize("device", DEVICES)
def test_orders_differ_where_they_should(device):
    # joint measures top-p on the un-renormalized distribution, so it keeps no more than hf.
    logits = random_logits(8, 500, torch.float32, device, scale=1.0)
    hf = kept(logitops.filter_logits(logits, top_k=20, top_p=0.5, order="hf"))
    joint = kept(logitops.filter_logits(logits, top_k=20, top_p=0.5, order="joint"))
    assert (joint <= hf).all() or (hf <= joint).all()
    assert (hf.sum(1) <= 20).all()


@pytest.mark.parametrize("device", DEVICES)
def test_per_row_temperature_and_filter_value(device):
    logits = random_logits(3, 100, torch.float32, device)
    temps = torch.tensor([0.5, 1.0, 2.0], device=device)
    out = logitops.filter_logits(logits, temperature=temps, top_k=10, filter_value=-1e4)
    for r in range(3):
        row = logits[r] / temps[r]
        keep = kept(hf_top_k(row, 10))
        torch.testing.assert_close(out[r][keep], row[keep], rtol=0, atol=0)
        assert (out[r][~keep] == -1e4).all()


@pytest.mark.parametrize("device", DEVICES)
def test_nan_rows(device):
    logits = random_logits(3, 50, torch.float32, device)
    logits[1, 7] = float("nan")
    out = logitops.filter_logits(logits, top_k=5, top_p=0.9)
    assert torch.isnan(out[1]).all() and not torch.isnan(out[[0, 2]]).any()
    tokens, logprobs = logitops.sample(logits, top_p=0.9, seed=3, return_logprobs=True)
    assert tokens[1] == -1 and torch.isnan(logprobs[1])
    assert ((tokens[[0, 2]] >= 0) & (tokens[[0, 2]] < 50)).all()
    greedy = logitops.sample(logits, temperature=0.0)
    assert greedy[1] == -1
    all_neg_inf = torch.full((1, 10), -float("inf"), device=device)
    assert logitops.sample(all_neg_inf, seed=0).item() == -1


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_row_of_neg_inf_gives_minus_one(device):
    # Greedy rows follow the contract of sampled ones: nothing to pick gives -1 and NaN.
    logits = random_logits(4, 30, torch.float32, device)
    logits[0] = -math.inf
    bias = torch.zeros(4, 30, device=device)
    bias[2] = -math.inf  # a finite row that the bias removes entirely
    for temperature in (0.0, torch.tensor([0.0, 0.0, 0.0, 0.9], device=device)):
        tokens, logprobs = logitops.sample(
            logits, temperature=temperature, logit_bias=bias, seed=1, return_logprobs=True
        )
        assert tokens[[0, 2]].tolist() == [-1, -1]
        assert torch.isnan(logprobs[[0, 2]]).all()
        assert tokens[1] == logits[1].argmax() and logprobs[1] == 0
        assert 0 <= tokens[3] < 30 and not torch.isnan(logprobs[3])
    one = torch.full((7,), -math.inf, dtype=torch.bfloat16, device=device)
    token, logprob = logitops.sample(one, temperature=0.0, return_logprobs=True)
    assert token.item() == -1 and torch.isnan(logprob)


# --- sampling -------------------------------------------------------------------------------


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Upper tail of the chi-square statistic (Wilson-Hilferty normal approximation)."""
    n = counts.sum().item()
    expected = probs * n
    mask = expected > 0
    stat = (((counts[mask] - expected[mask]) ** 2) / expected[mask]).sum().item()
    dof = int(mask.sum()) - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "setting",
    [
        dict(),
        dict(temperature=0.7, top_k=20),
        dict(top_p=0.8),
        dict(min_p=0.1, temperature=1.5),
        dict(top_k=30, top_p=0.9, order="joint"),
    ],
    ids=str,
)
def test_sample_frequencies_match_filtered_softmax(device, setting):
    torch.manual_seed(1)
    vocab, draws = 60, (20_000 if EMULATION else 200_000)  # a block per draw under emulation
    row = torch.randn(vocab, dtype=torch.float64, device=device) * 1.5
    logits = row.float().expand(draws, vocab).contiguous()
    tokens = logitops.sample(logits, seed=1234, **setting)
    filtered = logitops.filter_logits(
        row.float().unsqueeze(0), **{k: v for k, v in setting.items()}
    )[0].double()
    probs = torch.softmax(filtered, -1).cpu()
    counts = torch.bincount(tokens.cpu(), minlength=vocab).double()
    assert counts[probs == 0].sum() == 0, "a filtered token was sampled"
    assert chi_square_p_value(counts, probs) > 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_seeds_determinism_and_batch_invariance(device):
    logits = random_logits(16, 5000, torch.float32, device, scale=1.0)
    seeds = torch.arange(100, 116, device=device)
    a = logitops.sample(logits, top_p=0.95, seed=seeds)
    b = logitops.sample(logits, top_p=0.95, seed=seeds)
    assert torch.equal(a, b)
    perm = torch.randperm(16, device=device)
    c = logitops.sample(logits[perm], top_p=0.95, seed=seeds[perm])
    assert torch.equal(c, a[perm])
    # a row alone, or next to different rows, gets the same token
    alone = logitops.sample(logits[5:6], top_p=0.95, seed=seeds[5:6])
    assert alone.item() == a[5].item()
    other = random_logits(16, 5000, torch.float32, device)
    other[5] = logits[5]
    assert logitops.sample(other, top_p=0.95, seed=seeds)[5] == a[5]
    # a scalar seed keys the noise by row index too: rows differ, calls repeat
    x = logits[:1].expand(64, -1).contiguous()
    d = logitops.sample(x, seed=7)
    assert torch.equal(d, logitops.sample(x, seed=7))
    assert d.unique().numel() > 1


@pytest.mark.parametrize("device", DEVICES)
def test_generator_and_default_rng(device):
    logits = random_logits(32, 1000, torch.float32, device, scale=0.5)
    g1 = torch.Generator(device=device).manual_seed(3)
    g2 = torch.Generator(device=device).manual_seed(3)
    assert torch.equal(logitops.sample(logits, generator=g1), logitops.sample(logits, generator=g2))
    first, second = logitops.sample(logits), logitops.sample(logits)
    assert not torch.equal(first, second)  # fresh noise each call (1 in 1000^32 to collide)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_rows_and_logprobs(device):
    logits = random_logits(4, 300, torch.float32, device)
    logits[2, 10] = logits[2, 20] = logits[2].max() + 1  # tie: first index wins
    temps = torch.tensor([0.0, 1.0, 0.0, 0.8], device=device)
    tokens, logprobs = logitops.sample(
        logits, temperature=temps, top_k=50, seed=0, return_logprobs=True
    )
    assert tokens[0] == logits[0].argmax() and tokens[2] == 10
    assert logprobs[0] == 0 and logprobs[2] == 0
    for r in (1, 3):
        filtered = logitops.filter_logits(logits[r], temperature=float(temps[r]), top_k=50)
        expected = torch.log_softmax(filtered.double(), -1)[tokens[r]]
        torch.testing.assert_close(logprobs[r].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_sample_dtypes_and_1d(device, dtype):
    logits = random_logits(1, 128256, dtype, device)[0]
    token = logitops.sample(logits, top_k=50, top_p=0.9, seed=5)
    assert token.dim() == 0 and kept(logitops.filter_logits(logits, top_k=50, top_p=0.9))[token]


# --- dispatcher -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def decode_step(logits, seeds):
        filtered = logitops.filter_logits(logits, temperature=0.8, top_k=20, top_p=0.9)
        return filtered, logitops.sample(logits, temperature=0.8, top_k=20, top_p=0.9, seed=seeds)

    compiled = torch.compile(decode_step, fullgraph=True)
    logits = torch.randn(4, 300, device=device)
    seeds = torch.arange(4, device=device)
    eager, comp = decode_step(logits, seeds), compiled(logits, seeds)
    torch.testing.assert_close(comp[0], eager[0])
    assert torch.equal(comp[1], eager[1])


# --- processors and the module ----------------------------------------------------------------


def test_processors_match_transformers_warpers():
    transformers = pytest.importorskip("transformers")
    scores = torch.randn(4, 2000)
    pairs = [
        (
            logitops.processors.TemperatureLogitsWarper(0.7),
            transformers.TemperatureLogitsWarper(0.7),
        ),
        (logitops.processors.TopKLogitsWarper(13), transformers.TopKLogitsWarper(13)),
        (
            logitops.processors.TopPLogitsWarper(0.8, min_tokens_to_keep=2),
            transformers.TopPLogitsWarper(0.8, min_tokens_to_keep=2),
        ),
        (logitops.processors.MinPLogitsWarper(0.1), transformers.MinPLogitsWarper(0.1)),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours(None, scores), theirs(None, scores), rtol=0, atol=0)


def test_generate_with_our_processors_matches_transformers():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    prompt = torch.randint(0, 97, (2, 5))
    common = dict(max_new_tokens=12, do_sample=True, pad_token_id=0)
    torch.manual_seed(42)
    theirs = model.generate(prompt, temperature=0.9, top_k=20, top_p=0.9, **common)
    ours_list = transformers.LogitsProcessorList(
        [logitops.processors.LogitsFilter(temperature=0.9, top_k=20, top_p=0.9)]
    )
    torch.manual_seed(42)
    ours = model.generate(
        prompt, logits_processor=ours_list, temperature=1.0, top_k=None, top_p=None, **common
    )
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("device", DEVICES)
def test_logits_filter_takes_per_row_tensors(device):
    # Every per-row tensor filter_logits accepts, in the processor's constructor and call.
    scores = random_logits(2, 500, torch.float32, device)
    per_row = dict(
        temperature=torch.tensor([0.7, 1.3], device=device),
        top_k=torch.tensor([50, 400], device=device),
        top_p=torch.tensor([0.9, 0.5], dtype=torch.float64, device=device),
        min_p=torch.tensor([0.0, 0.05], device=device),
    )
    for name, value in per_row.items():
        processor = logitops.processors.LogitsFilter(**{name: value})
        torch.testing.assert_close(
            processor(None, scores), logitops.filter_logits(scores, **{name: value}), rtol=0, atol=0
        )
    bias = torch.randn(2, 500, device=device)
    processor = logitops.processors.LogitsFilter(**per_row, logit_bias=bias, order="vllm")
    expected = logitops.filter_logits(scores, **per_row, logit_bias=bias, order="vllm")
    torch.testing.assert_close(processor(None, scores), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="temperature"):
        logitops.processors.LogitsFilter(temperature=torch.tensor([0.7, 0.0], device=device))
    with pytest.raises(ValueError, match="top_p"):
        logitops.processors.LogitsFilter(
            temperature=per_row["temperature"], top_p=torch.tensor([0.9, 0.9, 0.9], device=device)
        )


def test_per_row_logits_filter_in_generate():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    prompt = torch.randint(0, 97, (2, 5))
    common = dict(max_new_tokens=12, do_sample=True, pad_token_id=0)
    torch.manual_seed(42)
    theirs = model.generate(prompt, temperature=0.9, top_k=20, top_p=0.9, **common)

    def ours(**kwargs):
        torch.manual_seed(42)
        processors = transformers.LogitsProcessorList([logitops.processors.LogitsFilter(**kwargs)])
        return model.generate(
            prompt, logits_processor=processors, temperature=1.0, top_k=None, top_p=None, **common
        )

    same = ours(
        temperature=torch.tensor([0.9, 0.9]),
        top_k=torch.tensor([20, 20]),
        top_p=torch.tensor([0.9, 0.9], dtype=torch.float64),
    )
    assert torch.equal(same, theirs)
    # different parameters per row: a greedy-like row 0 (top-k 1) next to row 1's setting
    mixed = ours(
        temperature=torch.tensor([0.9, 0.9]),
        top_k=torch.tensor([1, 20]),
        top_p=torch.tensor([0.9, 0.9], dtype=torch.float64),
    )
    greedy = model.generate(prompt[:1], do_sample=False, max_new_tokens=12, pad_token_id=0)
    assert torch.equal(mixed[0], greedy[0])


def test_sampler_module():
    sampler = logitops.nn.Sampler(temperature=0.7, top_p=0.95)
    logits = torch.randn(2, 1000)
    seeds = torch.tensor([5, 6])
    assert torch.equal(
        sampler(logits, seed=seeds),
        logitops.sample(logits, temperature=0.7, top_p=0.95, seed=seeds),
    )
    assert "top_p=0.95" in repr(sampler)
    assert list(sampler.state_dict()) == []


# --- bad input ------------------------------------------------------------------------------

L = torch.randn(2, 10)

BAD_CALLS = [
    ("top_k", ValueError, lambda: logitops.top_k_filter(L, 0)),
    ("top_k", TypeError, lambda: logitops.top_k_filter(L, 2.5)),
    ("top_p", ValueError, lambda: logitops.top_p_filter(L, 1.5)),
    ("top_p", ValueError, lambda: logitops.top_p_filter(L, -0.1)),
    ("min_p", ValueError, lambda: logitops.min_p_filter(L, 2.0)),
    ("temperature", ValueError, lambda: logitops.filter_logits(L, temperature=0.0)),
    ("temperature", ValueError, lambda: logitops.filter_logits(L, temperature=-1.0)),
    ("temperature", ValueError, lambda: logitops.sample(L, temperature=float("nan"))),
    ("top_k", ValueError, lambda: logitops.top_k_filter(L, torch.tensor([1, 2, 3]))),
    ("top_k", TypeError, lambda: logitops.top_k_filter(L, torch.tensor([1.0, 2.0]))),
    ("top_p", ValueError, lambda: logitops.top_p_filter(L, torch.tensor([0.5, 1.5]))),
    ("top_p", TypeError, lambda: logitops.top_p_filter(L, torch.tensor([1, 0]))),
    ("logits", TypeError, lambda: logitops.sample(L.long())),
    ("logits", ValueError, lambda: logitops.sample(torch.randn(2, 3, 4))),
    ("order", ValueError, lambda: logitops.filter_logits(L, top_k=2, order="sglang")),
    ("logit_bias", ValueError, lambda: logitops.filter_logits(L, logit_bias=torch.zeros(9))),
    ("seed", ValueError, lambda: logitops.sample(L, seed=torch.tensor([1.0, 2.0]))),
    (
        "seed",
        ValueError,
        lambda: logitops.sample(L, seed=1, generator=torch.Generator().manual_seed(1)),
    ),
    ("min_tokens_to_keep", ValueError, lambda: logitops.top_k_filter(L, 2, min_tokens_to_keep=0)),
    ("top_k", ValueError, lambda: logitops.processors.TopKLogitsWarper(0)),
    (
        "top_p",
        ValueError,
        lambda: logitops.processors.LogitsFilter(
            temperature=torch.tensor([0.7, 1.0]), top_p=torch.tensor([0.9, 0.9, 0.9])
        ),
    ),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()
