"""Chain speculative sampling (chain_speculative_sampling, chain_speculative_sampling_from_logits)
against a float64 oracle written from the documented semantics with the same counter-based
uniforms (a NumPy Philox4x32-10), and statistically: the emitted tokens follow the target
distributions, and the acceptance rate is sum min(p, q)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DTYPES, EMULATION
from scipy import stats
from torch import Tensor

import logitops

M32 = np.uint64(0xFFFFFFFF)
ACCEPT, RESIDUAL = 1, 2  # csrc/common/speculative_math.h's SpeculativeNoise


# --- the noise, as csrc/common/sampling_math.h and speculative_math.h define it --------------


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & M32 for c in (c0, c1, c2, c3))
    k0, k1 = np.uint64(k0) & M32, np.uint64(k1) & M32
    m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    w0, w1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    for _ in range(10):
        p0, p1 = m0 * c0, m1 * c2  # < 2^64: exact in uint64
        hi0, lo0 = p0 >> np.uint64(32), p0 & M32
        hi1, lo1 = p1 >> np.uint64(32), p1 & M32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + w0) & M32, (k1 + w1) & M32
    return c0, c1, c2, c3


def uniforms(seed, stream, purpose, position, index):
    seed = int(seed) & (2**64 - 1)
    c3 = ((stream >> 32) & 0xFFFFFF) | (purpose << 24)
    v0, v1, _, _ = philox4x32_10(index, position, stream & 0xFFFFFFFF, c3, seed, seed >> 32)
    bits = ((v0 << np.uint64(32)) | v1) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * 2.0**-53


def test_philox_matches_the_published_known_answer():
    # Random123's known-answer vector for philox4x32-10 with counter and key all ones.
    out = philox4x32_10(*(np.uint64(0xFFFFFFFF),) * 4, 0xFFFFFFFF, 0xFFFFFFFF)
    assert [int(v) for v in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


# --- the oracle --------------------------------------------------------------------------------


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def distributions(x: Tensor, logits: bool, temperature: float):
    """float64 probabilities [positions, V] of one row (None for an invalid logits row)."""
    acc = acc_dtype(x.dtype)
    z = x.to(acc)
    if not logits:
        return z.double()
    t = torch.tensor(temperature, dtype=acc)
    if t != 1:
        z = z / t
    z = z.double()
    if torch.isnan(z).any() or torch.isposinf(z).any() or torch.isneginf(z).all(-1).any():
        return None
    return torch.exp(z - torch.logsumexp(z, -1, keepdim=True))


def greedy_argmax(x: Tensor):
    z = x.to(acc_dtype(x.dtype)).double()
    if torch.isnan(z).any() or torch.isneginf(z).all(-1).any():
        return None
    return z.argmax(-1)  # first index on ties


def race(r: np.ndarray, seed, stream, position):
    """argmax_j r_j / E_j over r_j > 0, first index on ties; -1 when none."""
    candidates = np.nonzero(r > 0)[0]
    if candidates.size == 0:
        return -1
    e = -np.log(uniforms(seed, stream, RESIDUAL, position, candidates.astype(np.uint64)))
    scores = r[candidates] / e
    return int(candidates[np.argmax(scores)])  # np.argmax: first of equal maxima


def oracle(target, draft, ids, *, logits, temperature, seeds, per_row_seeds):
    """The documented semantics, row by row, in float64."""
    rows, positions, vocab = target.shape
    drafts = positions - 1
    tokens = torch.full((rows, positions), -1, dtype=torch.int64)
    accepted = torch.zeros(rows, dtype=torch.int64)
    emitted = torch.zeros(rows, dtype=torch.int64)
    for b in range(rows):
        seed, stream = int(seeds[b]), 0 if per_row_seeds else b
        t = float(temperature[b])
        greedy = logits and not t > 0
        d_ids = [int(v) for v in ids[b]]
        in_range = [0 <= d < vocab for d in d_ids]
        if greedy:
            argmax = greedy_argmax(target[b])
            if argmax is None:
                continue
            ok = [in_range[i] and d_ids[i] == int(argmax[i]) for i in range(drafts)]
            pos = next((i for i in range(drafts) if not ok[i]), drafts)
            token = int(argmax[pos])
        else:
            p = distributions(target[b], logits, t)
            if draft is not None:
                q = distributions(draft[b], logits, t)
            else:
                q = torch.zeros(drafts, vocab, dtype=torch.float64)
                for i, d in enumerate(d_ids):
                    if in_range[i]:
                        q[i, d] = 1.0
            if p is None or q is None:
                continue
            u = uniforms(seed, stream, ACCEPT, np.arange(drafts, dtype=np.uint64), 0)
            gathered = [
                (float(p[i, d]), float(q[i, d])) for i, d in enumerate(d_ids) if in_range[i]
            ]
            if any(math.isnan(a) or math.isnan(c) for a, c in gathered):
                continue
            ok = [
                in_range[i] and u[i] * float(q[i, d_ids[i]]) < float(p[i, d_ids[i]])
                for i in range(drafts)
            ]
            pos = next((i for i in range(drafts) if not ok[i]), drafts)
            pp = p[pos].numpy()
            qq = q[pos].numpy() if pos < drafts else np.zeros(vocab)
            if np.isnan(pp).any() or np.isnan(qq).any():
                continue
            token = race(np.maximum(pp - qq, 0.0), seed, stream, pos)
            if token < 0 and pos < drafts:
                token = race(np.maximum(pp, 0.0), seed, stream, pos)
        tokens[b, :pos] = torch.tensor(d_ids[:pos], dtype=torch.int64)
        tokens[b, pos] = token
        accepted[b] = sum(ok)
        emitted[b] = pos
    return tokens, accepted, emitted


def assert_same(actual, expected):
    for name, a, e in zip(("tokens", "accepted", "emitted"), actual, expected, strict=True):
        assert torch.equal(a.cpu(), e), f"{name}:\n{a}\nexpected\n{e}"


def run_op(target, draft, ids, *, logits, temperature, seeds, per_row_seeds):
    rows = target.shape[0]
    temp = torch.as_tensor(temperature, dtype=torch.float64).expand(rows).contiguous()
    return logitops.ops.speculative.speculative_sample(
        target, draft, ids, temp, logits, seeds, per_row_seeds
    )


def check(target, draft, ids, *, logits=False, temperature=1.0, seeds=None, per_row_seeds=True):
    rows = target.shape[0]
    if seeds is None:
        seeds = torch.arange(rows, dtype=torch.int64) * 7919 + 11
    temp = torch.as_tensor(temperature, dtype=torch.float64).expand(rows).contiguous()
    got = run_op(
        target,
        draft,
        ids,
        logits=logits,
        temperature=temp,
        seeds=seeds,
        per_row_seeds=per_row_seeds,
    )
    want = oracle(
        target,
        draft,
        ids,
        logits=logits,
        temperature=temp,
        seeds=seeds,
        per_row_seeds=per_row_seeds,
    )
    assert_same(got, want)
    return got


def make_probs(rows, positions, vocab, dtype, sharp=2.0):
    return torch.softmax(torch.randn(rows, positions, vocab, dtype=torch.float64) * sharp, -1).to(
        dtype
    )


def drafts_from(q: Tensor, generator=None):
    rows, positions, vocab = q.shape
    flat = q.double().reshape(-1, vocab).clamp_min(0)
    flat = flat / flat.sum(-1, keepdim=True)
    return torch.multinomial(flat, 1, generator=generator).reshape(rows, positions)


# --- exact agreement with the oracle -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1, 7, 50])
def test_probabilities_match_the_oracle(dtype, vocab):
    rows, drafts = 6, 3
    target = make_probs(rows, drafts + 1, vocab, dtype)
    # Rows 0-1: drafts from a nearby distribution (long accepted runs); the rest: independent.
    near = torch.softmax(
        target[:, :drafts].double().log() + 0.3 * torch.randn(rows, drafts, vocab), -1
    )
    draft = torch.where(
        torch.arange(rows)[:, None, None] < 2, near, make_probs(rows, drafts, vocab, torch.float64)
    ).to(dtype)
    ids = drafts_from(draft)
    tokens, accepted, emitted = check(target, draft, ids)
    assert (tokens >= -1).all() and (tokens < vocab).all()
    assert (emitted <= accepted).all() and (emitted <= drafts).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_with_per_row_temperature_match_the_oracle(dtype):
    rows, drafts, vocab = 6, 4, 33
    target = (torch.randn(rows, drafts + 1, vocab) * 2).to(dtype)
    draft = (target[:, :drafts].float() + 0.5 * torch.randn(rows, drafts, vocab)).to(dtype)
    temperature = torch.tensor([1.0, 0.7, 1.3, 0.0, 0.25, 0.0], dtype=torch.float64)
    ids = drafts_from(torch.softmax(draft.double() / temperature.clamp_min(0.5)[:, None, None], -1))
    ids[3] = target[3, :drafts].float().argmax(-1)  # a greedy row that accepts everything
    ids[5, 1] = (target[5, 1].float().argmax() + 1) % vocab  # and one that stops at 1 or before
    check(target, draft, ids, logits=True, temperature=temperature)


@pytest.mark.parametrize("logits", [False, True])
def test_without_draft_probabilities_drafts_are_point_masses(logits):
    rows, drafts, vocab = 8, 3, 12
    target = (
        torch.randn(rows, drafts + 1, vocab) * 3
        if logits
        else make_probs(rows, 4, vocab, torch.float32)
    )
    ids = torch.randint(0, vocab, (rows, drafts))
    ids[:4] = target[:4, :drafts].argmax(-1)  # likely accepted
    check(target, None, ids, logits=logits)


def test_a_shared_int_seed_keys_on_the_row_index():
    rows, drafts, vocab = 5, 2, 9
    target = make_probs(rows, drafts + 1, vocab, torch.float32)
    draft = make_probs(rows, drafts, vocab, torch.float32)
    ids = drafts_from(draft)
    seeds = torch.full((rows,), 1234, dtype=torch.int64)
    check(target, draft, ids, seeds=seeds, per_row_seeds=False)
    got = logitops.chain_speculative_sampling(draft, ids, target, seed=1234)
    assert_same(
        got,
        oracle(
            target,
            draft,
            ids,
            logits=False,
            temperature=torch.ones(rows),
            seeds=seeds,
            per_row_seeds=False,
        ),
    )


def test_no_drafts_samples_the_bonus_token():
    target = make_probs(4, 1, 10, torch.float32)
    tokens, accepted, emitted = check(
        target, torch.empty(4, 0, 10), torch.empty(4, 0, dtype=torch.long)
    )
    assert tokens.shape == (4, 1) and (tokens >= 0).all()
    assert (accepted == 0).all() and (emitted == 0).all()


@pytest.mark.emulation_skip("32000-token rows, several passes each")
@pytest.mark.parametrize("logits", [False, True])
def test_large_vocabulary_matches_the_oracle(logits):
    rows, drafts, vocab = 2, 2, 32000
    raw = torch.randn(rows, drafts + 1, vocab) * 4
    draft_raw = raw[:, :drafts] + torch.randn(rows, drafts, vocab)
    target, draft = (raw, draft_raw) if logits else (raw.softmax(-1), draft_raw.softmax(-1))
    ids = drafts_from(draft_raw.softmax(-1))
    check(target, draft, ids, logits=logits, temperature=0.9 if logits else 1.0)


def test_an_odd_vocabulary_with_unaligned_rows_matches_the_oracle():
    # 1021 elements per row: every row but the first starts off a 16-byte boundary.
    rows, drafts, vocab = 3, 2, 1021
    for dtype in (torch.float32, torch.bfloat16):
        target = make_probs(rows, drafts + 1, vocab, dtype, sharp=4.0)
        draft = make_probs(rows, drafts, vocab, dtype, sharp=4.0)
        check(target, draft, drafts_from(draft))
        check(
            target.float().log().to(dtype),
            draft.float().log().to(dtype),
            drafts_from(draft),
            logits=True,
        )


def test_non_contiguous_inputs():
    rows, drafts, vocab = 4, 2, 16
    target = make_probs(vocab, drafts + 1, rows, torch.float32).permute(2, 1, 0)
    draft = make_probs(vocab, drafts, rows, torch.float32).permute(2, 1, 0)
    ids = drafts_from(draft.contiguous()).t().contiguous().t()
    check(target, draft, ids)


# --- seeds and batch invariance ------------------------------------------------------------------


@pytest.mark.parametrize("logits", [False, True])
def test_per_row_seeds_are_batch_invariant(logits):
    rows, drafts, vocab = 12, 3, 20
    raw = torch.randn(rows, drafts + 1, vocab) * 2
    draft_raw = raw[:, :drafts] + 0.7 * torch.randn(rows, drafts, vocab)
    target, draft = (raw, draft_raw) if logits else (raw.softmax(-1), draft_raw.softmax(-1))
    ids = drafts_from(draft_raw.softmax(-1))
    seeds = torch.randint(0, 2**62, (rows,))
    fn = (
        logitops.chain_speculative_sampling_from_logits
        if logits
        else logitops.chain_speculative_sampling
    )
    full = fn(draft, ids, target, seed=seeds)
    perm = torch.randperm(rows)
    permuted = fn(draft[perm], ids[perm], target[perm], seed=seeds[perm])
    for a, b in zip(full, permuted, strict=True):
        assert torch.equal(a[perm], b)
    sliced = fn(draft[3:7], ids[3:7], target[3:7], seed=seeds[3:7])
    for a, b in zip(full, sliced, strict=True):
        assert torch.equal(a[3:7], b)
    again = fn(draft, ids, target, seed=seeds)
    for a, b in zip(full, again, strict=True):
        assert torch.equal(a, b)


def test_generator_draws_the_key():
    target = make_probs(3, 3, 10, torch.float32)
    draft = make_probs(3, 2, 10, torch.float32)
    ids = drafts_from(draft)
    a = logitops.chain_speculative_sampling(
        draft, ids, target, generator=torch.Generator().manual_seed(5)
    )
    b = logitops.chain_speculative_sampling(
        draft, ids, target, generator=torch.Generator().manual_seed(5)
    )
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


# --- edge cases ----------------------------------------------------------------------------------


def test_out_of_range_draft_ids_are_rejected_by_the_kernel():
    # The op itself (the CUDA path does not check the values): rejected, never emitted, nothing
    # read for them.
    rows, drafts, vocab = 4, 3, 8
    target = make_probs(rows, drafts + 1, vocab, torch.float32)
    draft = make_probs(rows, drafts, vocab, torch.float32)
    ids = drafts_from(draft)
    ids[0, 0], ids[1, 1], ids[2, 2], ids[3, 0] = -1, vocab, 2**40, -(2**40)
    for d in (draft, None):
        tokens, accepted, emitted = check(target, d, ids)
        assert emitted[0] == 0 and emitted[1] <= 1 and emitted[2] <= 2 and emitted[3] == 0
        assert ((tokens >= -1) & (tokens < vocab)).all()


def test_nan_rows_give_minus_one_and_leave_other_rows_alone():
    rows, drafts, vocab = 4, 2, 6
    target = make_probs(rows, drafts + 1, vocab, torch.float32)
    draft = make_probs(rows, drafts, vocab, torch.float32)
    ids = drafts_from(draft)
    clean = check(target, draft, ids)
    target[1, 0, ids[1, 0]] = float("nan")  # a gathered probability
    draft[2, 1, ids[2, 1]] = float("nan")
    tokens, accepted, emitted = check(target, draft, ids)
    for r in (1, 2):
        assert (tokens[r] == -1).all() and accepted[r] == 0 and emitted[r] == 0
    for r in (0, 3):
        assert torch.equal(tokens[r], clean[0][r])
    # Logits: NaN or +inf anywhere, or a position of all -inf, makes the row invalid.
    logits = torch.randn(rows, drafts + 1, vocab)
    logits[0, 2, 3] = float("nan")
    logits[1, 1, 0] = float("inf")
    logits[2, 0] = -float("inf")
    tokens, accepted, emitted = check(logits, None, ids, logits=True)
    assert (tokens[:3] == -1).all() and (tokens[3, 0] >= 0)
    tokens, _, _ = check(logits, None, ids, logits=True, temperature=0.0)  # greedy: +inf is a max
    assert (tokens[0] == -1).all() and (tokens[2] == -1).all() and tokens[1, 0] >= 0


def test_an_empty_residual_falls_back_to_the_target():
    # q >= p everywhere (here q = p with the draft's token of probability 0: rejected) leaves
    # max(p - q, 0) = 0; the token is drawn from p. An all-zero target leaves nothing: -1.
    p = torch.tensor([[[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    q = p[:, :1].clone()
    ids = torch.tensor([[0], [1]])
    tokens, accepted, emitted = check(p, q, ids)
    assert tokens[0, 0] in (1, 2) and tokens[0, 1] == -1 and emitted[0] == 0
    assert tokens[1].tolist() == [-1, -1]


def test_greedy_follows_vllm():
    # Accept while the draft is the target's argmax (first index on ties); the target's argmax at
    # the first mismatch; the bonus argmax when all match.
    target = torch.tensor(
        [
            [[0.0, 2.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]],
            [[0.0, 2.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]],
        ]
    )
    ids = torch.tensor([[1, 0], [2, 0]])
    tokens, accepted, emitted = logitops.chain_speculative_sampling_from_logits(
        None, ids, target, temperature=0.0
    )
    assert tokens.tolist() == [[1, 0, 2], [1, -1, -1]]
    assert accepted.tolist() == [2, 1] and emitted.tolist() == [2, 0]


# --- statistics: the emitted tokens follow the target --------------------------------------------

# Fixed inputs and seeds: each test is deterministic (it cannot flake), and the threshold is a
# chi-square quantile at 1e-4, which a correct sampler passes and a wrong one exceeds by far.
STAT_ROWS = 3000 if EMULATION else 40000
CRITICAL = stats.chi2.ppf(1 - 1e-4, 5)
P_TARGET = torch.tensor(
    [
        [0.30, 0.05, 0.20, 0.10, 0.25, 0.10],
        [0.05, 0.40, 0.15, 0.15, 0.05, 0.20],
        [0.10, 0.10, 0.10, 0.30, 0.30, 0.10],
    ],
    dtype=torch.float64,
)
Q_DRAFT = torch.tensor(
    [[0.10, 0.30, 0.20, 0.20, 0.10, 0.10], [0.25, 0.25, 0.05, 0.15, 0.25, 0.05]],
    dtype=torch.float64,
)


def chi_square(tokens: Tensor, p: Tensor) -> float:
    counts = torch.bincount(tokens, minlength=p.numel()).double()
    expected = p * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def speculate(q_claimed: Tensor, q_actual: Tensor, dtype=torch.float32, logits=False):
    rows = STAT_ROWS
    g = torch.Generator().manual_seed(2024)
    target = P_TARGET.expand(rows, -1, -1)
    draft = q_claimed.expand(rows, -1, -1)
    ids = drafts_from(q_actual.expand(rows, -1, -1), generator=g)
    seeds = torch.arange(rows, dtype=torch.int64) * 1_000_003 + 17
    if logits:
        return logitops.chain_speculative_sampling_from_logits(
            draft.log().to(dtype), ids, target.log().to(dtype), seed=seeds
        )
    return logitops.chain_speculative_sampling(draft.to(dtype), ids, target.to(dtype), seed=seeds)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("logits", [False, True])
def test_emitted_tokens_follow_the_target_distribution(dtype, logits):
    tokens, accepted, emitted = speculate(Q_DRAFT, Q_DRAFT, dtype, logits)
    # Position 0 is always emitted; position i given that i drafts were accepted; the bonus token
    # given that all were.
    assert chi_square(tokens[:, 0], P_TARGET[0]) < CRITICAL
    assert chi_square(tokens[emitted >= 1, 1], P_TARGET[1]) < CRITICAL
    assert chi_square(tokens[emitted == 2, 2], P_TARGET[2]) < CRITICAL
    assert (tokens[emitted < 2, 2] == -1).all()


def test_the_chi_square_test_fails_for_a_wrong_sampler():
    # Drafts drawn from another distribution than the draft probabilities claim: the
    # verification's guarantee is void, and the test must see it.
    wrong = torch.tensor([[0.02, 0.02, 0.02, 0.02, 0.02, 0.90]] * 2, dtype=torch.float64)
    tokens, _, _ = speculate(Q_DRAFT, wrong)
    assert chi_square(tokens[:, 0], P_TARGET[0]) > 10 * CRITICAL
    # And a sampler that ignores the draft at the rejection (samples p instead of p - q) is off
    # too: reproduce it from the op's own rejections, drawing the resample from p.
    tokens, _, emitted = speculate(Q_DRAFT, Q_DRAFT)
    g = torch.Generator().manual_seed(7)
    rejected = emitted == 0
    redrawn = torch.multinomial(
        P_TARGET[0].float(), int(rejected.sum()), replacement=True, generator=g
    )
    biased = tokens[:, 0].clone()
    biased[rejected] = redrawn
    assert chi_square(biased, P_TARGET[0]) > CRITICAL


def test_acceptance_rate_is_the_overlap_of_the_distributions():
    tokens, accepted, emitted = speculate(Q_DRAFT, Q_DRAFT)
    alpha = torch.minimum(P_TARGET[:2], Q_DRAFT).sum(-1)  # per position
    rows = STAT_ROWS
    first = (emitted >= 1).double().mean()
    assert abs(float(first - alpha[0])) < 5 * math.sqrt(float(alpha[0] * (1 - alpha[0])) / rows)
    # accepted counts every position on its own: its mean is the sum of the overlaps.
    spread = math.sqrt(float((alpha * (1 - alpha)).sum()) / rows)
    assert abs(float(accepted.double().mean() - alpha.sum())) < 5 * spread
    # emitted is the run length: P(emitted >= 2) = alpha_0 * alpha_1.
    both = float(alpha[0] * alpha[1])
    assert abs(float((emitted >= 2).double().mean()) - both) < 5 * math.sqrt(
        both * (1 - both) / rows
    )


# --- validation ----------------------------------------------------------------------------------

P = make_probs(2, 3, 5, torch.float32)
Q = make_probs(2, 2, 5, torch.float32)
IDS = torch.tensor([[0, 1], [2, 3]])

BAD_CALLS = [
    ("target_probs", TypeError, lambda: logitops.chain_speculative_sampling(Q, IDS, P.long())),
    ("target_probs", ValueError, lambda: logitops.chain_speculative_sampling(Q, IDS, P[0])),
    ("draft_probs", ValueError, lambda: logitops.chain_speculative_sampling(Q[:, :1], IDS, P)),
    ("draft_probs", TypeError, lambda: logitops.chain_speculative_sampling(Q.double(), IDS, P)),
    ("draft_token_ids", ValueError, lambda: logitops.chain_speculative_sampling(Q, IDS[:, :1], P)),
    ("draft_token_ids", TypeError, lambda: logitops.chain_speculative_sampling(Q, IDS.float(), P)),
    ("draft_token_ids", IndexError, lambda: logitops.chain_speculative_sampling(Q, IDS + 3, P)),
    (
        "seed",
        ValueError,
        lambda: logitops.chain_speculative_sampling(Q, IDS, P, seed=torch.ones(2)),
    ),
    (
        "seed",
        ValueError,
        lambda: logitops.chain_speculative_sampling(Q, IDS, P, seed=1, generator=torch.Generator()),
    ),
    (
        "temperature",
        ValueError,
        lambda: logitops.chain_speculative_sampling_from_logits(Q, IDS, P, temperature=-1.0),
    ),
    (
        "temperature",
        ValueError,
        lambda: logitops.chain_speculative_sampling_from_logits(
            Q, IDS, P, temperature=torch.tensor([1.0, float("nan")])
        ),
    ),
    (
        "target_logits",
        ValueError,
        lambda: logitops.chain_speculative_sampling_from_logits(Q, IDS, torch.randn(2, 3, 0)),
    ),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()
