"""Repetition, presence and frequency penalties: fused into filter_logits / sample and as
processors. References: a per-token oracle written from the documented semantics (computed in the
filters' dtype, so it is the float64 oracle for float64 logits and the exact float32 arithmetic
otherwise), and transformers' RepetitionPenaltyLogitsProcessor itself."""

from __future__ import annotations

import math

import pytest
import torch

import logitops
from logitops import processors

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_row_value(value, i):
    return float(value[i]) if isinstance(value, torch.Tensor) else float(value)


def oracle(
    logits,
    *,
    prompt_ids=None,
    output_ids=None,
    output_counts=None,
    pad_id=None,
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    repetition_scope="prompt_and_output",
    logit_bias=None,
):
    """z = penalized(x + bias) in the filters' compute dtype, token by token: repetition (a
    negative value multiplied, any other divided, once per distinct token of the history), then
    value - frequency * count, then value - presence, count being the output occurrences."""
    acc = acc_dtype(logits.dtype)
    z = logits.to(acc).clone()
    if logit_bias is not None:
        z = z + logit_bias.to(acc)
    rows, vocab = z.shape
    for i in range(rows):
        counts: dict[int, int] = {}
        prompt: set[int] = set()
        if prompt_ids is not None:
            prompt = {int(t) for t in prompt_ids[i] if pad_id is None or int(t) != pad_id}
        if output_ids is not None:
            for e, t in enumerate(output_ids[i].tolist()):
                if pad_id is not None and t == pad_id:
                    continue
                c = 1 if output_counts is None else int(output_counts[i, e])
                if c > 0:  # an entry counted 0 times is not in the history
                    counts[t] = counts.get(t, 0) + c
        rep = torch.tensor(per_row_value(repetition_penalty, i), dtype=acc)
        pres = torch.tensor(per_row_value(presence_penalty, i), dtype=acc)
        freq = torch.tensor(per_row_value(frequency_penalty, i), dtype=acc)
        if repetition_scope == "output":
            scaled = {t for t, c in counts.items() if c > 0}
        else:
            scaled = prompt | set(counts)
        for t in range(vocab):
            v = z[i, t]
            if t in scaled:
                v = v * rep if v < 0 else v / rep
            c = counts.get(t, 0)
            if c > 0:
                v = v - freq * torch.tensor(float(c), dtype=acc)
                v = v - pres
            z[i, t] = v
    return z


def histories(rows, vocab, lp, lo, *, pad_id=-1, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (rows, lp), generator=g)
    output = torch.randint(0, vocab, (rows, lo), generator=g)
    if lo > 1:
        output[:, 1] = output[:, 0]  # duplicates
        output[0, -1] = pad_id  # pads
    if lp > 1:
        prompt[-1, 0] = pad_id
    return prompt, output


def logits_for(rows, vocab, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "vocab",
    [1, 7, pytest.param(32000, marks=pytest.mark.emulation_skip("slow under the emulator"))],
)
@pytest.mark.parametrize("scope", ["prompt_and_output", "output"])
def test_penalties_match_oracle(dtype, vocab, scope):
    if vocab == 32000 and scope == "output":
        pytest.skip("one scope at the large vocabulary keeps the runtime modest")
    rows = 3
    x = logits_for(rows, vocab, dtype)
    prompt, output = histories(rows, vocab, 5, 6)
    kwargs = dict(
        prompt_ids=prompt,
        output_ids=output,
        pad_id=-1,
        repetition_penalty=1.3,
        presence_penalty=0.4,
        frequency_penalty=0.2,
        repetition_scope=scope,
    )
    got = logitops.filter_logits(x, **kwargs)
    want = oracle(x, **kwargs).to(dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, x) or vocab == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_semantics_by_hand(dtype):
    # Token 0: prompt only; 1: output twice; 2: output once; 3: never seen.
    x = torch.tensor([[2.0, -2.0, 3.0, 1.0]], dtype=dtype)
    out = logitops.filter_logits(
        x,
        prompt_ids=torch.tensor([[0, 0]]),
        output_ids=torch.tensor([[1, 2, 1]]),
        repetition_penalty=2.0,
        presence_penalty=0.5,
        frequency_penalty=0.25,
    )
    want = torch.tensor([[1.0, -4.0 - 0.5 - 0.5, 1.5 - 0.25 - 0.5, 1.0]], dtype=dtype)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    out = logitops.filter_logits(
        x,
        prompt_ids=torch.tensor([[0, 0]]),
        output_ids=torch.tensor([[1, 2, 1]]),
        repetition_penalty=2.0,
        repetition_scope="output",
    )
    torch.testing.assert_close(out, torch.tensor([[2.0, -4.0, 1.5, 1.0]], dtype=dtype))


def test_output_counts_equal_repeated_ids():
    x = logits_for(2, 50, torch.float32)
    ids = torch.tensor([[3, 7, 3, 3, -1], [9, 9, 1, -1, -1]])
    sparse_ids = torch.tensor([[3, 7, 3], [9, 1, 0]])
    sparse_counts = torch.tensor([[2, 1, 1], [2, 1, 0]])
    kwargs = dict(repetition_penalty=1.5, presence_penalty=0.3, frequency_penalty=0.7)
    a = logitops.filter_logits(x, output_ids=ids, pad_id=-1, **kwargs)
    b = logitops.filter_logits(x, output_ids=sparse_ids, output_counts=sparse_counts, **kwargs)
    # Row 1's token 0 is counted 0 times: not in the history at all.
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert b[1, 0] == x[1, 0]
    want = oracle(x, output_ids=sparse_ids, output_counts=sparse_counts, **kwargs)
    torch.testing.assert_close(b, want, rtol=0, atol=0)


def test_empty_histories_and_neutral_values_change_nothing():
    x = logits_for(3, 7, torch.float32)
    empty = torch.empty(3, 0, dtype=torch.int64)
    out = logitops.filter_logits(
        x, prompt_ids=empty, output_ids=empty, repetition_penalty=2.0, presence_penalty=1.0
    )
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    prompt, output = histories(3, 7, 4, 4)
    out = logitops.filter_logits(x, prompt_ids=prompt, output_ids=output, pad_id=-1)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    only_pads = torch.full((3, 4), 5)
    out = logitops.filter_logits(x, output_ids=only_pads, pad_id=5, frequency_penalty=3.0)
    torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_per_row_penalties():
    rows, vocab = 3, 40
    x = logits_for(rows, vocab, torch.float32, seed=3)
    prompt, output = histories(rows, vocab, 6, 8, seed=3)
    kwargs = dict(
        prompt_ids=prompt,
        output_ids=output,
        pad_id=-1,
        repetition_penalty=torch.tensor([1.0, 0.7, 1.8]),
        presence_penalty=torch.tensor([0.0, -0.5, 1.0]),
        frequency_penalty=torch.tensor([0.3, 0.0, -0.2]),
    )
    got = logitops.filter_logits(x, **kwargs)
    torch.testing.assert_close(got, oracle(x, **kwargs), rtol=0, atol=0)
    # Each row alone gives its row: the per-row values are not mixed up.
    for i in range(rows):
        one = logitops.filter_logits(
            x[i : i + 1],
            prompt_ids=prompt[i : i + 1],
            output_ids=output[i : i + 1],
            pad_id=-1,
            repetition_penalty=float(kwargs["repetition_penalty"][i]),
            presence_penalty=float(kwargs["presence_penalty"][i]),
            frequency_penalty=float(kwargs["frequency_penalty"][i]),
        )
        torch.testing.assert_close(one[0], got[i], rtol=0, atol=0)


def test_non_finite_logits():
    x = torch.tensor(
        [[-math.inf, 1.0, -1.0, math.inf], [math.nan, 1.0, 2.0, 3.0]], dtype=torch.float32
    )
    out = logitops.filter_logits(
        x,
        output_ids=torch.tensor([[0, 1, 2], [1, 2, 3]]),
        repetition_penalty=1.5,
        frequency_penalty=0.5,
    )
    assert out[0, 0] == -math.inf and out[0, 3] == math.inf
    torch.testing.assert_close(out[0, 1:3], torch.tensor([1 / 1.5 - 0.5, -1.5 - 0.5]))
    assert torch.isnan(out[1]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["hf", "vllm", "joint"])
def test_fused_filters_equal_oracle_then_filter(dtype, order):
    rows, vocab = 3, 257
    x = logits_for(rows, vocab, dtype, seed=5)
    bias = torch.zeros(vocab)
    bias[::17] = 1.5
    prompt, output = histories(rows, vocab, 9, 12, seed=5)
    pen = dict(
        prompt_ids=prompt,
        output_ids=output,
        pad_id=-1,
        repetition_penalty=torch.tensor([1.2, 0.8, 2.0], dtype=torch.float64),
        presence_penalty=0.5,
        frequency_penalty=torch.tensor([0.1, 0.0, 0.6], dtype=torch.float64),
    )
    filters = dict(temperature=0.7, top_k=torch.tensor([5, 40, 300]), top_p=0.9, min_p=0.01)
    got = logitops.filter_logits(x, logit_bias=bias, order=order, **filters, **pen)
    z = oracle(x, logit_bias=bias, **pen)
    want = logitops.filter_logits(z, order=order, **filters).to(dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    # The penalties changed the survivors.
    plain = logitops.filter_logits(x, logit_bias=bias, order=order, **filters)
    assert not torch.equal(got, plain)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_equals_oracle_then_sample(dtype):
    rows, vocab = 3, 300
    x = logits_for(rows, vocab, dtype, seed=7)
    prompt, output = histories(rows, vocab, 8, 10, seed=7)
    pen = dict(
        prompt_ids=prompt,
        output_ids=output,
        pad_id=-1,
        repetition_penalty=1.4,
        presence_penalty=torch.tensor([0.2, 1.0, -0.3], dtype=torch.float64),
        frequency_penalty=0.3,
    )
    z = oracle(x, **pen)
    seeds = torch.tensor([11, 12, 13])
    for temperature in (0.0, 0.8, torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)):
        kw = dict(temperature=temperature, top_k=50, top_p=0.95, seed=seeds, return_logprobs=True)
        tokens, logprobs = logitops.sample(x, **kw, **pen)
        want_tokens, want_logprobs = logitops.sample(z, **kw)
        torch.testing.assert_close(tokens, want_tokens, rtol=0, atol=0)
        torch.testing.assert_close(logprobs, want_logprobs, rtol=0, atol=0)


def test_greedy_avoids_a_penalised_token():
    x = torch.tensor([[5.0, 4.9, 0.0]])
    history = torch.tensor([[0]])
    assert int(logitops.sample(x, temperature=0.0)) == 0
    assert int(logitops.sample(x, temperature=0.0, output_ids=history, presence_penalty=1.0)) == 1
    assert int(logitops.sample(x, temperature=0.0, prompt_ids=history, repetition_penalty=1.1)) == 1


def test_one_dimensional_logits():
    x = torch.tensor([1.0, -1.0, 2.0])
    out = logitops.filter_logits(x, output_ids=torch.tensor([0, 1]), repetition_penalty=2.0)
    torch.testing.assert_close(out, torch.tensor([0.5, -2.0, 2.0]))


# transformers' own class.
transformers = pytest.importorskip("transformers")
HFRepetition = transformers.RepetitionPenaltyLogitsProcessor


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", [0.6, 1.0, 1.3, 2.5])
def test_repetition_processor_matches_transformers(dtype, penalty):
    rows, vocab = 3, 97
    x = logits_for(rows, vocab, dtype, seed=9)
    x[0, :5] = -math.inf
    ids = torch.randint(0, vocab, (rows, 20), generator=torch.Generator().manual_seed(9))
    ids[:, 3] = ids[:, 2]  # repeated ids
    ids[0, :3] = torch.tensor([0, 1, 2])  # -inf scores in the history
    want = HFRepetition(penalty)(ids, x.clone())
    got = processors.RepetitionPenaltyLogitsProcessor(penalty)(ids, x.clone())
    assert got.dtype == want.dtype
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    else:
        # torch divides reduced-precision tensors by a Python number as a multiplication by the
        # float32 reciprocal; logitops divides in float32. Both round once to the dtype.
        torch.testing.assert_close(got, want)
        assert (got != want).float().mean() < 0.01


@pytest.mark.parametrize("ignore", [3, torch.tensor([0, 5, 20])])
def test_repetition_processor_prompt_ignore_length(ignore):
    rows, vocab = 3, 50
    x = logits_for(rows, vocab, torch.float32, seed=4)
    ids = torch.randint(0, vocab, (rows, 20), generator=torch.Generator().manual_seed(4))
    want = HFRepetition(1.7, prompt_ignore_length=ignore)(ids, x.clone())
    got = processors.RepetitionPenaltyLogitsProcessor(1.7, prompt_ignore_length=ignore)(ids, x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_repetition_processor_ids_past_the_vocabulary_are_dropped():
    # transformers: embedding vocabularies larger than the lm head's output.
    x = logits_for(2, 10, torch.float32)
    ids = torch.tensor([[1, 12, 3], [15, 15, 0]])
    want = HFRepetition(1.5)(ids, x.clone())
    torch.testing.assert_close(processors.RepetitionPenaltyLogitsProcessor(1.5)(ids, x), want)


def test_repetition_processor_rejects_what_transformers_rejects():
    for bad in (0.0, -1.0, 1):
        with pytest.raises(ValueError, match="penalty"):
            processors.RepetitionPenaltyLogitsProcessor(bad)


def test_presence_frequency_processor():
    rows, vocab, prompt_length = 2, 30, 4
    x = logits_for(rows, vocab, torch.float32, seed=2)
    ids = torch.randint(0, vocab, (rows, 12), generator=torch.Generator().manual_seed(2))
    proc = processors.PresenceFrequencyPenaltyLogitsProcessor(
        presence_penalty=0.5, frequency_penalty=torch.tensor([0.25, 1.0]), prompt_length=4
    )
    want = oracle(
        x,
        output_ids=ids[:, prompt_length:],
        presence_penalty=0.5,
        frequency_penalty=torch.tensor([0.25, 1.0]),
    )
    torch.testing.assert_close(proc(ids, x), want, rtol=0, atol=0)
    per_row = processors.PresenceFrequencyPenaltyLogitsProcessor(
        presence_penalty=0.5, prompt_length=torch.tensor([4, 12])
    )
    got = per_row(ids, x)
    torch.testing.assert_close(
        got[0], oracle(x[:1], output_ids=ids[:1, 4:], presence_penalty=0.5)[0]
    )
    torch.testing.assert_close(got[1], x[1], rtol=0, atol=0)  # no output yet


def test_processors_in_a_transformers_list():
    ids = torch.tensor([[1, 2, 2]])
    x = logits_for(1, 6, torch.float32)
    chain = transformers.LogitsProcessorList(
        [
            processors.RepetitionPenaltyLogitsProcessor(1.2),
            processors.PresenceFrequencyPenaltyLogitsProcessor(0.3, 0.1, prompt_length=1),
        ]
    )
    want = oracle(
        oracle(x, prompt_ids=ids, repetition_penalty=1.2),
        output_ids=ids[:, 1:],
        presence_penalty=0.3,
        frequency_penalty=0.1,
    )
    torch.testing.assert_close(chain(ids, x), want, rtol=0, atol=0)


L = torch.zeros(2, 5)
IDS = torch.tensor([[0, 1], [2, 3]])
BAD_CALLS = [
    ("repetition_penalty", ValueError, lambda: logitops.filter_logits(L, repetition_penalty=0.0)),
    (
        "repetition_penalty",
        ValueError,
        lambda: logitops.sample(
            L, repetition_penalty=torch.tensor([1.0, -1.0], dtype=torch.float64)
        ),
    ),
    ("presence_penalty", ValueError, lambda: logitops.filter_logits(L, presence_penalty=math.inf)),
    ("frequency_penalty", ValueError, lambda: logitops.sample(L, frequency_penalty=math.nan)),
    (
        "frequency_penalty",
        ValueError,
        lambda: logitops.filter_logits(L, frequency_penalty=torch.tensor([0.0, 1.0, 2.0])),
    ),
    (
        "output_ids",
        ValueError,
        lambda: logitops.filter_logits(
            L, output_ids=torch.tensor([[0, 5], [1, 1]]), presence_penalty=1.0
        ),
    ),
    (
        "prompt_ids",
        ValueError,
        lambda: logitops.filter_logits(L, prompt_ids=torch.tensor([[-2, 1], [1, 1]]), pad_id=-1),
    ),
    ("prompt_ids", TypeError, lambda: logitops.filter_logits(L, prompt_ids=IDS.int())),
    ("output_ids", ValueError, lambda: logitops.sample(L, output_ids=torch.tensor([0, 1]))),
    ("output_ids", TypeError, lambda: logitops.filter_logits(L, output_ids=[[0, 1], [1, 2]])),
    (
        "output_counts",
        ValueError,
        lambda: logitops.filter_logits(L, output_ids=IDS, output_counts=torch.tensor([[1], [1]])),
    ),
    (
        "output_counts",
        ValueError,
        lambda: logitops.filter_logits(L, output_ids=IDS, output_counts=-IDS),
    ),
    ("output_counts", ValueError, lambda: logitops.filter_logits(L, output_counts=IDS)),
    ("pad_id", TypeError, lambda: logitops.filter_logits(L, output_ids=IDS, pad_id=1.0)),
    (
        "repetition_scope",
        ValueError,
        lambda: logitops.filter_logits(L, repetition_scope="prompt"),
    ),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()


def test_op_rejects_partial_penalty_arguments():
    args = (
        L,
        None,
        torch.ones(2, dtype=torch.float64),
        torch.full((2,), 5),
        torch.ones(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
        "hf",
        -math.inf,
        1,
    )
    with pytest.raises(ValueError, match="all or none"):
        torch.ops.logitops.filter_logits(*args, penalty_ids=IDS)
    with pytest.raises(ValueError, match="penalty_counts"):
        torch.ops.logitops.filter_logits(
            *args,
            penalty_ids=IDS,
            penalty_counts=IDS.int(),
            repetition_penalty=torch.ones(2, dtype=torch.float64),
            presence_penalty=torch.zeros(2, dtype=torch.float64),
            frequency_penalty=torch.zeros(2, dtype=torch.float64),
        )
