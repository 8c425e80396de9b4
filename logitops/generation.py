"""Beam-search decoding over :func:`logitops.beam_search_step`.

:func:`beam_search` reproduces transformers' ``generate(num_beams=K, do_sample=False)`` for
decoder-only models (its ``_beam_search`` of transformers 5.x): the same candidates
(``max(2, 1 + number of EOS ids) * K`` per batch item, the first step restricted to beam 0 by
scores of ``-1e9`` for the others), the same EOS and length bookkeeping, ``length_penalty``,
``early_stopping`` (``True``, ``False`` or ``"never"``) and ``num_return_sequences``. The one
difference is the step itself: log_softmax, the running scores and the top-k over
``K x V`` are one logitops kernel reading the logits once instead of three PyTorch passes and a
``[batch, K * V]`` temporary. No logits processor runs (transformers' default for a model whose
generation config asks for none).
"""

from __future__ import annotations

import inspect
from numbers import Integral, Real
from typing import NamedTuple

import torch
from torch import Tensor

from .functional.beam_search import beam_search_step
from .ops.beam_search import MAX_CANDIDATES

__all__ = ["BeamSearchOutput", "beam_search"]

# transformers' score of the beams that must not be picked (the first step's beams 1.., finished
# candidates, hypotheses that can no longer enter the finished set).
_EXCLUDED = -1.0e9


class BeamSearchOutput(NamedTuple):
    """What :func:`beam_search` returns."""

    sequences: Tensor
    """int64 ``[batch * num_return_sequences, prompt + generated]``: prompt and continuation,
    padded after EOS (with ``pad_token_id``, transformers' rule) to the longest one returned."""
    sequences_scores: Tensor
    """float32 ``[batch * num_return_sequences]``: the summed log-probabilities of the generated
    tokens divided by ``generated_length ** length_penalty`` (EOS included in both)."""


def _gather(t: Tensor, index: Tensor) -> Tensor:
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def _token_ids(name: str, value) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.reshape(-1).tolist()
    ids = [value] if isinstance(value, Integral) and not isinstance(value, bool) else value
    if not isinstance(ids, (list, tuple)) or not ids:
        raise TypeError(f"{name} must be an int, a list of ints or None, got {value!r}")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, Integral) or i < 0:
            raise ValueError(f"{name} must hold non-negative token ids, got {value!r}")
    return [int(i) for i in ids]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


@torch.no_grad()
def beam_search(
    model,
    input_ids: Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    attention_mask: Tensor | None = None,
) -> BeamSearchOutput:
    """Beam-search decoding of a decoder-only model with its KV cache.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM: ``model(input_ids=, attention_mask=, position_ids=, use_cache=True)``
        returning ``.logits`` and its cache (``.cache`` or ``.past_key_values``) with
        ``reorder_cache``.
    input_ids : Tensor
        int64 ``[batch, prompt]``, left-padded where rows differ in length.
    num_beams : int
        Beams per batch item; ``max(2, 1 + number of EOS ids) * num_beams`` must be at most 64
        and at most ``num_beams * V``.
    max_new_tokens : int
        Tokens to generate at most (>= 1).
    eos_token_id : int or list of int, optional
        Token id(s) that end a hypothesis.
    pad_token_id : int, optional
        Fills finished sequences (transformers' rule: the pad id when non-zero, else the first
        EOS id; -1 without EOS ids). Defaults to the first EOS id. Also infers the attention
        mask from the prompt when ``attention_mask`` is not given and it differs from EOS.
    length_penalty : float
        A finished hypothesis scores ``sum of log-probs / generated_length ** length_penalty``.
    early_stopping : bool or "never"
        transformers' rule: ``True`` stops a batch item once ``num_beams`` hypotheses finished;
        ``False`` also stops when the best running beam, divided by the current generated
        length ** length_penalty, cannot beat the worst finished one; ``"never"`` uses the
        longest possible length for that bound when ``length_penalty > 0``.
    num_return_sequences : int
        Hypotheses returned per batch item, best first (<= num_beams).
    attention_mask : Tensor, optional
        ``[batch, prompt]`` of 0 / 1.

    Returns
    -------
    BeamSearchOutput
        ``(sequences, sequences_scores)``, as transformers'
        ``generate(..., return_dict_in_generate=True, output_scores=True)``.

    Examples
    --------
    >>> import torch, transformers
    >>> import logitops.generation
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    >>> model = transformers.GPT2LMHeadModel(config).eval()
    >>> prompt = torch.tensor([[1, 2, 3]])
    >>> out = logitops.generation.beam_search(model, prompt, num_beams=2, max_new_tokens=4)
    >>> ref = model.generate(prompt, num_beams=2, max_new_tokens=4, do_sample=False,
    ...     return_dict_in_generate=True, output_scores=True, pad_token_id=0)
    >>> torch.equal(out.sequences, ref.sequences)
    True
    >>> torch.allclose(out.sequences_scores, ref.sequences_scores, atol=1e-5)
    True
    """
    if not isinstance(input_ids, Tensor) or input_ids.dtype != torch.int64 or input_ids.dim() != 2:
        raise TypeError("input_ids must be an int64 tensor [batch, prompt]")
    num_beams = _positive_int("num_beams", num_beams)
    max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
    num_return_sequences = _positive_int("num_return_sequences", num_return_sequences)
    if num_return_sequences > num_beams:
        raise ValueError(
            f"num_return_sequences must be <= num_beams ({num_beams}), got {num_return_sequences}"
        )
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, Real):
        raise TypeError(f"length_penalty must be a float, got {length_penalty!r}")
    length_penalty = float(length_penalty)
    eos = _token_ids("eos_token_id", eos_token_id)
    pad = _token_ids("pad_token_id", pad_token_id)
    if pad is not None and len(pad) != 1:
        raise ValueError(f"pad_token_id must be one token id, got {pad_token_id!r}")
    pad_id = pad[0] if pad is not None else (eos[0] if eos is not None else None)
    beams_to_keep = max(2, 1 + (len(eos) if eos is not None else 0)) * num_beams
    if beams_to_keep > MAX_CANDIDATES:
        raise ValueError(
            f"num_beams must keep at most {MAX_CANDIDATES} candidates per step "
            f"(max(2, 1 + EOS ids) * num_beams = {beams_to_keep})"
        )

    device = input_ids.device
    batch, prompt_len = input_ids.shape
    max_length = prompt_len + max_new_tokens
    eos_ids = torch.tensor(eos, device=device) if eos is not None else None
    # transformers' fill of the unwritten positions ("pad or eos[0]" on a tensor: a pad of 0 is
    # falsy there, so it falls back to the EOS id).
    fill = -1 if eos is None else (pad_id if pad_id else eos[0])

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
        if pad_id is not None and (eos is None or pad_id not in eos):
            if bool((input_ids == pad_id).any()):
                attention_mask = input_ids.ne(pad_id).long()
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
            f"{tuple(attention_mask.shape)}"
        )
    parameters = set(inspect.signature(model.forward).parameters)
    kwargs = {"use_cache": True, "return_dict": True}
    if "logits_to_keep" in parameters:
        kwargs["logits_to_keep"] = 1
    position_ids = None
    if "position_ids" in parameters:
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids = position_ids.masked_fill(attention_mask == 0, 0)
        position_ids = position_ids.repeat_interleave(num_beams, dim=0)
    # An all-ones mask is dropped, as transformers drops it (the attention then runs unmasked).
    mask = None if bool((attention_mask == 1).all()) else attention_mask
    if mask is not None:
        mask = mask.repeat_interleave(num_beams, dim=0)
    cache_name = "cache" if "cache" in parameters else "past_key_values"

    running_sequences = torch.full(
        (batch, num_beams, max_length), fill, dtype=torch.int64, device=device
    )
    running_sequences[:, :, :prompt_len] = input_ids.unsqueeze(1)
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros((batch, num_beams), dtype=torch.float32, device=device)
    running_beam_scores[:, 1:] = _EXCLUDED
    beam_scores = torch.full((batch, num_beams), _EXCLUDED, dtype=torch.float32, device=device)
    is_sent_finished = torch.zeros((batch, num_beams), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    running_beam_indices = torch.full(
        (batch, num_beams, max_new_tokens), -1, dtype=torch.int32, device=device
    )
    beam_indices = running_beam_indices.clone()
    top_num_beam_mask = torch.zeros(beams_to_keep, dtype=torch.bool, device=device)
    top_num_beam_mask[:num_beams] = True
    batch_offset = torch.arange(batch, device=device).view(-1, 1) * num_beams

    cache = None
    cur_len = prompt_len
    while True:
        if cache is None:
            step_ids = input_ids.repeat_interleave(num_beams, dim=0)
            step_positions = position_ids
        else:
            step_ids = running_sequences[:, :, cur_len - 1].reshape(-1, 1)
            step_positions = position_ids[:, -1:] if position_ids is not None else None
        inputs = {"input_ids": step_ids, "attention_mask": mask, **kwargs}
        if step_positions is not None:
            inputs["position_ids"] = step_positions.contiguous()
        if cache is not None:
            inputs[cache_name] = cache
        outputs = model(**inputs)
        cache = getattr(outputs, "cache", None) or getattr(outputs, "past_key_values", None)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        if position_ids is not None:
            position_ids = torch.cat([position_ids, position_ids[:, -1:] + 1], dim=-1)
        # transformers upcasts the step's logits to float32, whatever the model's dtype.
        logits = outputs.logits[:, -1, :].to(torch.float32)
        del outputs
        vocab = logits.shape[-1]
        if num_beams * vocab < beams_to_keep:
            raise ValueError(
                f"num_beams * vocab ({num_beams * vocab}) must be >= the {beams_to_keep} "
                "candidates a step keeps"
            )

        step = beam_search_step(
            logits, running_beam_scores.reshape(-1), num_beams, num_candidates=beams_to_keep
        )
        topk_log_probs = step.scores
        topk_beams = step.beam_indices
        topk_running_beam_indices = _gather(running_beam_indices, topk_beams)
        topk_running_sequences = _gather(running_sequences, topk_beams)
        topk_running_sequences[:, :, cur_len] = step.tokens
        topk_running_beam_indices[:, :, cur_len - prompt_len] = (topk_beams + batch_offset).to(
            torch.int32
        )

        # Stopping criteria of each candidate: the length limit, or an EOS token.
        hits = torch.full_like(step.tokens, cur_len + 1 >= max_length, dtype=torch.bool)
        if eos_ids is not None:
            hits |= torch.isin(step.tokens, eos_ids)

        # The best num_beams unfinished candidates continue.
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * _EXCLUDED
        next_topk = torch.topk(topk_running_log_probs, k=num_beams)[1]
        running_sequences = _gather(topk_running_sequences, next_topk)
        running_beam_scores = _gather(topk_running_log_probs, next_topk)
        running_beam_indices = _gather(topk_running_beam_indices, next_topk)

        # Candidates among the top num_beams that just finished may enter the finished set.
        just_finished = hits & top_num_beam_mask[None, :]
        finished_scores = topk_log_probs / ((cur_len + 1 - prompt_len) ** length_penalty)
        full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (early_stopping is True)
        finished_scores += full.to(torch.float32) * _EXCLUDED
        finished_scores += (~improvable).to(torch.float32) * _EXCLUDED
        finished_scores += (~just_finished) * _EXCLUDED
        merged_scores = torch.cat((beam_scores, finished_scores), dim=1)
        keep = torch.topk(merged_scores, k=num_beams)[1]
        sequences = _gather(torch.cat((sequences, topk_running_sequences), dim=1), keep)
        beam_scores = _gather(merged_scores, keep)
        beam_indices = _gather(torch.cat((beam_indices, topk_running_beam_indices), dim=1), keep)
        is_sent_finished = _gather(torch.cat((is_sent_finished, just_finished), dim=1), keep)

        cache.reorder_cache(running_beam_indices[..., cur_len - prompt_len].reshape(-1))
        cur_len += 1

        # Can a running beam still beat the worst finished hypothesis?
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = running_beam_scores[:, :1] / (best_length**length_penalty)
        worst_finished = torch.where(
            is_sent_finished, torch.min(beam_scores, dim=1, keepdim=True)[0], _EXCLUDED
        )
        improvable = improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        open_beam = ~(torch.all(is_sent_finished) & (early_stopping is True))
        if not bool(torch.any(improvable) & open_beam & ~torch.all(hits)):
            break

    sequences = sequences[:, :num_return_sequences, :].reshape(batch * num_return_sequences, -1)
    beam_scores = beam_scores[:, :num_return_sequences].reshape(-1)
    beam_indices = beam_indices[:, :num_return_sequences, :].reshape(
        batch * num_return_sequences, -1
    )
    generated = int((beam_indices + 1).bool().sum(dim=1).max())
    return BeamSearchOutput(sequences[:, : prompt_len + generated], beam_scores)
