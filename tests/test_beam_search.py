"""logitops.beam_search_step against a float64 oracle (log_softmax + add + a stable ranking over
the flattened beams), and logitops.generation.beam_search against transformers' generate()."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPES, EMULATION

import logitops
import logitops.generation

INF = float("inf")


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def oracle_scores(logits, beam_scores):
    """[rows, V] float64 scores with the documented rules for constant rows."""
    x = logits.double()
    b = beam_scores.double()
    lp = torch.log_softmax(x, -1)
    lp[(x == -INF).all(-1)] = -INF  # log_softmax gives NaN there
    s = lp + b[:, None]
    nan_row = torch.isnan(x).any(-1) | (x == INF).any(-1) | torch.isnan(b) | (b == INF)
    s[nan_row] = float("nan")
    s[(b == -INF) & ~nan_row] = -INF
    return s


def oracle(logits, beam_scores, num_beams, num_candidates):
    """(scores, beams, tokens) of each batch item, best first; ties by flattened index, NaN
    last."""
    rows, vocab = logits.shape
    s = oracle_scores(logits, beam_scores).reshape(rows // num_beams, num_beams * vocab)
    width = min(num_candidates, num_beams * vocab)
    key = torch.where(torch.isnan(s), -INF, s)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    nan_last = torch.sort(torch.isnan(s.gather(1, order)).int(), dim=1, stable=True).indices
    order = order.gather(1, nan_last)[:, :width]
    return s.gather(1, order), order // vocab, order % vocab


def check(logits, beam_scores, num_beams, num_candidates=None, *, exact=True):
    step = logitops.beam_search_step(logits, beam_scores, num_beams, num_candidates=num_candidates)
    c = num_candidates if num_candidates is not None else 2 * num_beams
    scores, beams, tokens = oracle(logits, beam_scores, num_beams, c)
    assert step.scores.dtype == acc_dtype(logits.dtype)
    assert step.scores.shape == scores.shape == step.tokens.shape == step.beam_indices.shape
    assert step.tokens.dtype == step.beam_indices.dtype == torch.int64
    rtol = 1e-12 if logits.dtype == torch.float64 else 2e-6
    torch.testing.assert_close(step.scores.double(), scores, rtol=rtol, atol=rtol, equal_nan=True)
    if exact:
        assert torch.equal(step.beam_indices, beams)
        assert torch.equal(step.tokens, tokens)
    else:
        # Near-ties may swap under rounding: the picks must score as the oracle's, up to it.
        picked = oracle_scores(logits, beam_scores).reshape(beams.shape[0], -1)
        flat = step.beam_indices * logits.shape[1] + step.tokens
        torch.testing.assert_close(picked.gather(1, flat), scores, rtol=rtol, atol=rtol)
        assert all(len(set(r)) == len(r) for r in flat.tolist())
    return step


def spaced_logits(rows, vocab, dtype, gap=0.25):
    """Distinct logits a quarter apart (exact in every dtype for small vocabularies), shuffled:
    no near-ties under any rounding, so the order is exact."""
    base = torch.arange(vocab, dtype=torch.float64) * gap - vocab * gap / 2
    return torch.stack([base[torch.randperm(vocab)] for _ in range(rows)]).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1, 7, 50])
@pytest.mark.parametrize("num_beams", [1, 2, 3, 8])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_the_oracle(dtype, vocab, num_beams, batch):
    rows = batch * num_beams
    logits = spaced_logits(rows, vocab, dtype)
    # Beam scores far enough apart (in units of the logits' gap) that no two candidates tie.
    beam_scores = -torch.arange(rows, dtype=torch.float64) * 0.125 * (vocab + 3) / 7
    check(logits, beam_scores, num_beams)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_beams", [1, 4, 8])
def test_large_vocabulary(dtype, num_beams):
    vocab = 32000 if not EMULATION or num_beams == 1 else 4099
    logits = (torch.randn(2 * num_beams, vocab, dtype=torch.float64) * 3).to(dtype)
    beam_scores = torch.randn(2 * num_beams) - 2
    check(logits, beam_scores, num_beams, exact=False)


@pytest.mark.parametrize("num_candidates", [1, 3, 16, 33, 64])
def test_num_candidates(num_candidates):
    logits = spaced_logits(4 * 2, 40, torch.float32)
    beam_scores = torch.tensor([0.0, -0.3, -0.7, -1.1] * 2)
    check(logits, beam_scores, 4, num_candidates)


def test_vocabulary_smaller_than_candidates():
    # K * V < 2K: every candidate comes back, fewer than num_candidates.
    logits = torch.tensor([[0.5], [0.25], [2.0], [1.0]])
    step = check(logits, torch.tensor([0.0, -1.0, -2.0, 0.5]), 2)
    assert step.scores.shape == (2, 2)
    step = check(spaced_logits(3 * 5, 2, torch.float32), torch.zeros(15) - 1, 5)
    assert step.scores.shape == (3, 10)


def test_first_step_masks_the_other_beams():
    logits = torch.randn(3, 9).repeat_interleave(4, dim=0)
    beam_scores = torch.tensor([0.0, -1e9, -1e9, -1e9] * 3)
    step = check(logits, beam_scores, 4, exact=False)
    assert (step.beam_indices == 0).all()


def test_ties_rank_by_flattened_index():
    # Equal logits within a row, and identical rows with identical beam scores: every tie is
    # exact in any arithmetic, so the order is the documented one.
    row = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0, 1.0])
    logits = torch.stack([row, row, row.flip(0), row])
    beam_scores = torch.tensor([0.0, 0.0, 0.0, 0.0])
    step = check(logits, beam_scores, 4, 12)
    assert step.beam_indices[0, :3].tolist() == [0, 0, 0]
    assert step.tokens[0, :3].tolist() == [1, 2, 4]
    # Beams 0, 1 and 3 are the same row; beam 2 is it reversed (its 3s at tokens 1, 3, 4).
    check(logits, beam_scores, 2, 5)
    # A whole vocabulary of one value: the lowest tokens of the first beams.
    flat = torch.zeros(6, 7)
    step = check(flat, torch.zeros(6), 3, 6)
    assert step.tokens[0].tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_rows(dtype):
    logits = spaced_logits(8, 7, torch.float64)
    logits[0] = -INF  # all -inf: -inf scores, lowest tokens
    logits[1, 2] = float("nan")  # NaN row: NaN scores, ranked last
    logits[2, 3:] = -INF  # partly -inf
    logits[3, 5] = INF  # +inf: NaN like log_softmax
    logits = logits.to(dtype)
    beam_scores = torch.tensor([0.0, 0.0, 0.0, 0.0, -INF, INF, float("nan"), -1.0])
    check(logits, beam_scores, 4, 28)
    check(logits, beam_scores, 2, 9)
    check(logits, beam_scores, 1, 3)


def test_beam_scores_forms_and_dtypes():
    logits = spaced_logits(6, 11, torch.float64)
    scores = torch.randn(2, 3) * 0.01
    a = logitops.beam_search_step(logits, scores, 3)
    b = logitops.beam_search_step(logits, scores.reshape(-1).float(), 3)
    assert a.scores.dtype == torch.float64
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.beam_indices, b.beam_indices)
    # Non-contiguous rows (unit stride along the vocabulary) read as their contiguous copy.
    wide = torch.randn(6, 30)
    sliced = wide[:, 5:16]
    c = logitops.beam_search_step(sliced, torch.zeros(6), 3)
    d = logitops.beam_search_step(sliced.contiguous(), torch.zeros(6), 3)
    # (The CUDA kernels' summation order follows the rows' alignment: equal up to rounding.)
    assert torch.equal(c.tokens, d.tokens)
    torch.testing.assert_close(c.scores, d.scores)


def test_empty_batch():
    step = logitops.beam_search_step(torch.randn(0, 5), torch.zeros(0), 2)
    assert step.scores.shape == (0, 4)


def test_torch_compile_matches_eager():
    logits, beam_scores = torch.randn(6, 33), torch.randn(6)
    compiled = torch.compile(
        lambda x, s: tuple(logitops.beam_search_step(x, s, 3)), fullgraph=True, backend="eager"
    )
    got = compiled(logits, beam_scores)
    want = logitops.beam_search_step(logits, beam_scores, 3)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


L = torch.randn(4, 10)
S = torch.zeros(4)


def _generate(input_ids=None, **overrides):
    kw = dict(num_beams=2, max_new_tokens=3, eos_token_id=0)
    kw.update(overrides)
    ids = torch.tensor([[3, 4, 5]]) if input_ids is None else input_ids
    return logitops.generation.beam_search(None, ids, **kw)


BAD_CALLS = [
    ("logits", TypeError, lambda: logitops.beam_search_step(L.long(), S, 2)),
    ("logits", ValueError, lambda: logitops.beam_search_step(L[0], S, 2)),
    ("logits", ValueError, lambda: logitops.beam_search_step(torch.randn(4, 0), S, 2)),
    ("num_beams", ValueError, lambda: logitops.beam_search_step(L, S, 3)),
    ("num_beams", ValueError, lambda: logitops.beam_search_step(L, S, 0)),
    ("num_beams", TypeError, lambda: logitops.beam_search_step(L, S, 2.0)),
    ("beam_scores", ValueError, lambda: logitops.beam_search_step(L, torch.zeros(3), 2)),
    ("beam_scores", TypeError, lambda: logitops.beam_search_step(L, torch.zeros(4).long(), 2)),
    ("beam_scores", TypeError, lambda: logitops.beam_search_step(L, [0.0] * 4, 2)),
    (
        "num_candidates",
        ValueError,
        lambda: logitops.beam_search_step(L, S, 2, num_candidates=65),
    ),
    ("num_candidates", ValueError, lambda: logitops.beam_search_step(L, S, 2, num_candidates=0)),
    (
        "num_candidates",
        TypeError,
        lambda: logitops.beam_search_step(L, S, 2, num_candidates=True),
    ),
    # The loop checks its arguments before it calls the model.
    ("num_beams", ValueError, lambda: _generate(num_beams=0)),
    ("num_beams", ValueError, lambda: _generate(num_beams=40)),
    ("max_new_tokens", ValueError, lambda: _generate(max_new_tokens=0)),
    ("num_return_sequences", ValueError, lambda: _generate(num_return_sequences=3)),
    ("early_stopping", ValueError, lambda: _generate(early_stopping="always")),
    ("early_stopping", ValueError, lambda: _generate(early_stopping=1)),
    ("eos_token_id", ValueError, lambda: _generate(eos_token_id=-1)),
    ("length_penalty", TypeError, lambda: _generate(length_penalty="1")),
    ("input_ids", TypeError, lambda: _generate(input_ids=torch.zeros(1, 3))),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()


def test_op_checks_what_the_functional_layer_checks():
    op = torch.ops.logitops.beam_search_step.default
    with pytest.raises(ValueError, match="beam_scores"):
        op(L, torch.zeros(4, dtype=torch.float64), 2, 4)  # not the accumulation dtype
    with pytest.raises(ValueError, match="num_candidates"):
        op(L, S, 2, 65)
    with pytest.raises(ValueError, match="num_beams"):
        op(L, S, 3, 4)


# --- the decoding loop against transformers' generate() -----------------------------------------

VOCAB = 96


def tiny_model(kind, dtype=torch.float32):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64,
            initializer_range=0.3, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
            initializer_range=0.3, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config)
    return model.eval().to(dtype)


def prompts(batch):
    torch.manual_seed(2)
    ids = torch.randint(3, VOCAB, (batch, 6))
    mask = torch.ones_like(ids)
    if batch > 1:  # left padding of different lengths
        mask[1, :2] = 0
        mask[2, :4] = 0
        ids[mask == 0] = 7
    return ids, mask


def generate_both(model, ids, mask, **kw):
    ref = model.generate(
        ids, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
        output_scores=True, **kw,
    )  # fmt: skip
    ours = logitops.generation.beam_search(model, ids, attention_mask=mask, **kw)
    return ours, ref


def assert_same(ours, ref):
    assert torch.equal(ours.sequences, ref.sequences), (ours.sequences, ref.sequences)
    torch.testing.assert_close(ours.sequences_scores, ref.sequences_scores, rtol=1e-5, atol=1e-5)


def eos_hit_by(model, ids, mask, num_beams):
    """A token the unconstrained search emits early in its best hypothesis: as EOS, it is hit."""
    out = logitops.generation.beam_search(
        model, ids, attention_mask=mask, num_beams=num_beams, max_new_tokens=8, eos_token_id=0
    )
    return int(out.sequences[0, ids.shape[1] + 2])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("num_beams", [2, 4])
@pytest.mark.parametrize("eos", ["hit", "not hit"])
def test_generation_matches_transformers(kind, batch, num_beams, eos):
    model = tiny_model(kind)
    ids, mask = prompts(batch)
    eos_id = eos_hit_by(model, ids, mask, num_beams) if eos == "hit" else 0
    ours, ref = generate_both(
        model, ids, mask, num_beams=num_beams, max_new_tokens=8, eos_token_id=eos_id,
        pad_token_id=5, num_return_sequences=num_beams // 2,
    )  # fmt: skip
    assert_same(ours, ref)
    if eos == "not hit":
        # (A hit EOS need not be in the returned hypotheses: a longer beam may outscore it.)
        assert not (ours.sequences[:, ids.shape[1] :] == eos_id).any()


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0, -0.5])
@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_generation_length_penalty_and_early_stopping(length_penalty, early_stopping):
    model = tiny_model("gpt2")
    ids, mask = prompts(3)
    eos_id = eos_hit_by(model, ids, mask, 3)
    ours, ref = generate_both(
        model, ids, mask, num_beams=3, max_new_tokens=10, eos_token_id=[eos_id, 0],
        pad_token_id=5, length_penalty=length_penalty, early_stopping=early_stopping,
        num_return_sequences=3,
    )  # fmt: skip
    assert_same(ours, ref)


@pytest.mark.parametrize("pad_token_id", [None, 0])
def test_generation_pad_rules(pad_token_id):
    # No pad id: transformers pads with the EOS id; a pad id of 0 also falls back to it.
    model = tiny_model("llama")
    ids, _ = prompts(1)
    eos_id = eos_hit_by(model, ids, None, 2)
    ours, ref = generate_both(
        model, ids, None, num_beams=2, max_new_tokens=8, eos_token_id=eos_id,
        pad_token_id=pad_token_id, num_return_sequences=2,
    )  # fmt: skip
    assert_same(ours, ref)


def test_generation_float64_model():
    # transformers upcasts the step's logits to float32 whatever the model's dtype; so does the
    # loop, so a float64 model matches too.
    model = tiny_model("gpt2", torch.float64)
    ids, mask = prompts(3)
    ours, ref = generate_both(
        model, ids, mask, num_beams=2, max_new_tokens=6, eos_token_id=0, pad_token_id=5
    )
    assert_same(ours, ref)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_generation_one_beam_is_greedy_without_eos(kind):
    # generate(num_beams=1) is greedy search; without an EOS hit, beam search with one beam
    # follows the same tokens and scores their summed log-probabilities / length.
    model = tiny_model(kind)
    ids, mask = prompts(3)
    ref = model.generate(
        ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=7, eos_token_id=0,
        pad_token_id=5, return_dict_in_generate=True, output_scores=True,
    )  # fmt: skip
    ours = logitops.generation.beam_search(
        model, ids, attention_mask=mask, num_beams=1, max_new_tokens=7, eos_token_id=0,
        pad_token_id=5,
    )  # fmt: skip
    assert torch.equal(ours.sequences, ref.sequences)
    new = ref.sequences[:, ids.shape[1] :]
    logprobs = torch.stack([torch.log_softmax(s, -1) for s in ref.scores], 1)
    total = logprobs.gather(2, new.unsqueeze(-1)).squeeze(-1).sum(1) / new.shape[1]
    torch.testing.assert_close(ours.sequences_scores, total, rtol=1e-5, atol=1e-5)
