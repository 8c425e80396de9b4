"""Top-N log-probabilities, token log-probabilities and vLLM ranks (logitops.top_logprobs) and
the logprob modes of logitops.sample_with_logprobs, against float64 oracles: torch.log_softmax,
a stable sort by (value desc, id asc) and vLLM's rank rule (count of log-probabilities >= the
token's)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DTYPES, assert_close

import logitops


def oracle(logits, n, temperature=1.0, token=None):
    """(top logprobs [B, N], ids [B, N], token logprob [B], rank [B]) in float64."""
    t = torch.as_tensor(temperature, dtype=torch.float64)
    z = logits.double() / (t.unsqueeze(1) if t.dim() else t)
    lp = torch.log_softmax(z, -1)
    rows, vocab = z.shape
    values = torch.full((rows, n), -math.inf, dtype=torch.float64)
    ids = torch.full((rows, n), -1, dtype=torch.long)
    tok_lp = torch.full((rows,), math.nan, dtype=torch.float64)
    rank = torch.full((rows,), -1, dtype=torch.long)
    for i in range(rows):
        if z[i].isnan().any():
            values[i, : min(n, vocab)] = math.nan
            continue
        # ids ascending, then a stable sort by descending z: ties keep the lower id first.
        order = sorted(range(vocab), key=lambda j: (-z[i, j].item(), j))[:n]
        ids[i, : len(order)] = torch.tensor(order, dtype=torch.long)
        values[i, : len(order)] = lp[i, order]
        if token is not None and 0 <= token[i] < vocab:
            tok_lp[i] = lp[i, token[i]]
            rank[i] = int((z[i] >= z[i, token[i]]).sum())
    return values, ids, tok_lp, rank


def check(out, expected, dtype):
    values, ids, tok_lp, rank = expected
    assert torch.equal(out.top_ids, ids)
    tol = torch.float64 if dtype == torch.float64 else torch.float32
    assert_close(out.top_logprobs, values, tol, scale=10, what="top logprobs")
    assert_close(out.token_logprob, tok_lp, tol, scale=10, what="token logprob")
    assert torch.equal(out.token_rank, rank)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab,n", [(1, 1), (7, 0), (7, 3), (7, 20), (300, 20), (33, 33)])
def test_top_logprobs_matches_oracle(dtype, vocab, n):
    rows = 3
    x = (torch.randn(rows, vocab, dtype=torch.float64) * 2).to(dtype)
    if vocab > 4:
        x[1, 2] = x[1, 4]  # a tie
        x[2, 0] = -math.inf
    temperature = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    token = torch.tensor([0, vocab - 1, vocab // 2])
    out = logitops.top_logprobs(x, n, temperature=temperature, token=token)
    assert out.top_logprobs.shape == (rows, n) and out.top_ids.shape == (rows, n)
    check(out, oracle(x, n, temperature, token), dtype)


def test_ties_go_to_the_lower_id_and_rank_counts_ties():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    out = logitops.top_logprobs(x, 2, token=torch.tensor([4]))
    assert out.top_ids.tolist() == [[1, 2]]
    assert out.token_rank.tolist() == [3]  # vLLM: >= counts every tie
    out = logitops.top_logprobs(torch.zeros(1, 6), 3, token=torch.tensor([5]))
    assert out.top_ids.tolist() == [[0, 1, 2]] and out.token_rank.tolist() == [6]


def test_non_finite_rows_and_tokens():
    x = torch.randn(4, 9)
    x[0, 3] = math.nan
    x[1] = -math.inf
    x[2, :5] = -math.inf
    token = torch.tensor([1, 2, 0, -1])
    out = logitops.top_logprobs(x, 6, token=token)
    assert out.top_logprobs[0].isnan().all() and (out.top_ids[0] == -1).all()
    assert out.token_rank[0] == -1 and out.token_logprob[0].isnan()
    assert out.token_logprob[1].isnan()  # log_softmax of a row of -inf is NaN
    assert out.token_logprob[2] == -math.inf and out.token_rank[2] == 9
    assert out.token_rank[3] == -1 and out.token_logprob[3].isnan()
    check(
        logitops.top_logprobs(x[2:], 6, token=token[2:]), oracle(x[2:], 6, 1.0, token[2:]),
        torch.float32,
    )  # fmt: skip


def test_more_logprobs_than_vocab_pads():
    out = logitops.top_logprobs(torch.tensor([[0.0, 1.0]]), 4)
    assert out.top_ids.tolist() == [[1, 0, -1, -1]]
    assert out.top_logprobs[0, 2:].eq(-math.inf).all()
    assert out.token_logprob is None and out.token_rank is None  # no token asked for


@pytest.mark.emulation_skip("vocab 32000")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_vocab(dtype):
    x = torch.randn(3, 32000).to(dtype)
    token = torch.tensor([5, 31999, 17])
    check(logitops.top_logprobs(x, 20, token=token), oracle(x, 20, 1.0, token), dtype)


def test_1d_logits():
    x = torch.randn(10)
    out = logitops.top_logprobs(x, 3, token=torch.tensor(4))
    full = logitops.top_logprobs(x.unsqueeze(0), 3, token=torch.tensor([4]))
    assert torch.equal(out.top_ids, full.top_ids[0]) and out.token_rank == full.token_rank[0]


# --- sample_with_logprobs --------------------------------------------------------------------

FILTERS = dict(temperature=0.7, top_k=10, top_p=0.9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", ["raw_logprobs", "raw_logits"])
def test_raw_modes(dtype, mode):
    x = torch.randn(3, 50).to(dtype)
    bias = torch.zeros(50)
    bias[7] = 5.0
    seeds = torch.tensor([1, 2, 3])
    out = logitops.sample_with_logprobs(
        x, num_logprobs=5, logprobs_mode=mode, logit_bias=bias, seed=seeds, **FILTERS
    )
    assert torch.equal(out.tokens, logitops.sample(x, logit_bias=bias, seed=seeds, **FILTERS))
    values, ids, tok_lp, rank = oracle(x, 5, 1.0, out.tokens)
    if mode == "raw_logits":  # the raw logits themselves
        values = x.double().gather(1, ids)
        tok_lp = x.double().gather(1, out.tokens.unsqueeze(1))[:, 0]
    check(logitops.TopLogprobs(*out[1:]), (values, ids, tok_lp, rank), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["processed_logprobs", "processed_logits"])
def test_processed_modes(dtype, mode):
    x = torch.randn(3, 50).to(dtype)
    temperature = torch.tensor([0.7, 0.0, 1.3], dtype=torch.float64)  # a greedy row
    seeds = torch.tensor([4, 5, 6])
    kwargs = dict(temperature=temperature, top_k=10, top_p=0.9, seed=seeds)
    out = logitops.sample_with_logprobs(x, num_logprobs=12, logprobs_mode=mode, **kwargs)
    tokens, sample_lp = logitops.sample(x, return_logprobs=True, **kwargs)
    assert torch.equal(out.tokens, tokens)
    processed = logitops.filter_logits(
        x.float(), temperature=torch.tensor([0.7, 1.0, 1.3]).double(), top_k=10, top_p=0.9
    )
    values, ids, tok_lp, rank = oracle(processed, 12, 1.0, out.tokens)
    if mode == "processed_logits":
        values = processed.double().gather(1, ids.clamp_min(0)).masked_fill(ids < 0, -math.inf)
        tok_lp = processed.double().gather(1, out.tokens.unsqueeze(1))[:, 0]
    else:
        # The sampled token's processed log-probability is sample's own (greedy rows: 0 there).
        assert_close(out.token_logprob[[0, 2]], sample_lp[[0, 2]].double(), torch.float32)
    check(logitops.TopLogprobs(*out[1:]), (values, ids, tok_lp, rank), torch.float32)
    assert (out.token_rank >= 1).all()


def test_nan_row_sampled_token_is_minus_one():
    x = torch.randn(2, 9)
    x[0, 1] = math.nan
    out = logitops.sample_with_logprobs(x, num_logprobs=2, seed=1)
    assert out.tokens[0] == -1 and out.token_rank[0] == -1 and out.token_logprob[0].isnan()
    assert out.token_rank[1] >= 1


L = torch.randn(2, 5)

BAD_CALLS = [
    ("num_logprobs", ValueError, lambda: logitops.top_logprobs(L, -1)),
    ("num_logprobs", TypeError, lambda: logitops.top_logprobs(L, 2.0)),
    ("num_logprobs", ValueError, lambda: logitops.top_logprobs(torch.randn(1, 2000), 1500)),
    ("token", ValueError, lambda: logitops.top_logprobs(L, 1, token=torch.tensor([1]))),
    ("token", TypeError, lambda: logitops.top_logprobs(L, 1, token=torch.tensor([1.0, 2.0]))),
    ("temperature", ValueError, lambda: logitops.top_logprobs(L, 1, temperature=0.0)),
    ("logits", TypeError, lambda: logitops.top_logprobs(L.long(), 1)),
    ("logprobs_mode", ValueError, lambda: logitops.sample_with_logprobs(L, logprobs_mode="raw")),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()
