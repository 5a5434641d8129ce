"""Batched sampling that encodes the prompts' shared prefix once and reuses its KV cache.

Why a decoding loop of our own: `generate` has no notion of a prefix shared by all
prompts — it prefills every prompt × every sample in full. A self-training round's
prompts are one ~1,000-token few-shot prefix plus a short query each, so here:

1. the longest common token prefix of the prompts is run once (batch 1) — or taken from
   the previous call's cache, extended by the tokens that differ;
2. each prompt's suffix (its query) is run once, on top of the prefix cache, left-padded
   within the suffix so all sequences of a batch end together;
3. the suffix caches are repeated for the n samples, and tokens are sampled step by step
   (temperature, top-p) with the stop rule (`viprog.policy.stops`) and end-of-sequence
   tokens checked after every token; finished sequences leave the batch at once.

Positions stay exact (the prefix occupies positions 0..P-1 for every sequence, padding
is masked out), so greedy decoding gives the same tokens as `generate` on each prompt.
A padding position may see no real token at all (prompts with no shared prefix and of
different lengths); `grouped_attention` keeps such rows finite.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from viprog.policy.base import SamplingParams
from viprog.policy.stops import eos_ids, stopped

#: prefixes shorter than this are not worth a separate forward pass
MIN_PREFIX = 16
#: the prefix is run in chunks of this many tokens (bounds the attention scores' memory)
PREFILL_CHUNK = 512

PrefixCache = tuple[tuple[int, ...], list[tuple[Any, Any]]]
#: the attention implementation the decoder switches a model to while it samples
ATTENTION = "viprog_gqa"


def grouped_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                      dropout: float = 0.0, **_: Any) -> tuple[Any, None]:
    """Attention for grouped-query models that never repeats the key/value heads.

    transformers' SDPA path copies every key/value head once per query head when a mask
    is given (always, with padding) — for a 0.5B Qwen with 7 query heads per KV head and
    a 1,000-token prefix that is gigabytes of copying per decoding step. Here the query
    heads of a group are stacked against their one KV head in a single matmul instead.
    """
    import torch

    batch, q_heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = q_heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    q = query.reshape(batch, kv_heads, group * q_len, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).mul_(scale).view(batch, kv_heads, group, q_len, kv_len)
    # Masked scores get the dtype's lowest finite value, not -inf (as eager attention does): a left-padding
    # query with no earlier real token sees nothing, and softmax over a row of -inf is NaN — a NaN that the
    # next layer's keys and values carry into every real row (0 weight x NaN value = NaN).
    floor = torch.finfo(scores.dtype).min
    if attention_mask is not None:  # bool, True = attend, [batch, 1, q_len, kv_len]
        scores = scores.masked_fill(~attention_mask[:, :, None].to(torch.bool), floor)
    elif q_len > 1:  # no mask: plain causal, the queries being the last q_len positions
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        scores = scores.masked_fill(~causal, floor)
    probs = torch.softmax(scores.float(), dim=-1).to(value.dtype).view(batch, kv_heads, group * q_len, kv_len)
    out = torch.matmul(probs, value).view(batch, q_heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, grouped_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def pick_tokens(logits: Any, temperature: float, top_p: float) -> Any:
    """One token per row: argmax at temperature 0, else nucleus sampling (global RNG)."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return torch.multinomial(probs, 1).squeeze(-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keeps the token that crosses top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs, 1)
    return order.gather(-1, choice).squeeze(-1)


class SharedPrefixDecoder:
    """One `run` samples `params.n` continuations for each tokenised prompt."""

    def __init__(self, model: Any, tokenizer: Any, device: str, batch_size: int, progress: bool = True) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.batch_size, self.progress = batch_size, progress
        self.eos = eos_ids(tokenizer, getattr(model, "generation_config", None))
        self.prefill_tokens = 0
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        #: transformers 5 renamed `past_key_values` to `cache`; older and remote-code models use the old name
        self.cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    # -- the prefix ---------------------------------------------------------------------------
    def _cache(self, layers: list[tuple[Any, Any]] | None, rows: int) -> Any:
        from transformers import DynamicCache

        if not layers:
            return DynamicCache()
        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                            for k, v in layers])

    def prefix(self, ids: tuple[int, ...], cached: PrefixCache | None) -> list[tuple[Any, Any]] | None:
        """Per-layer (key, value) of `ids` (batch 1), reusing `cached` where it agrees."""
        import torch

        if not ids:
            return None
        done, layers = 0, None
        if cached is not None:
            done = common_prefix([cached[0], ids])
            if done >= MIN_PREFIX:
                layers = [(k[:, :, :done], v[:, :, :done]) for k, v in cached[1]]
            else:
                done = 0
        if done == len(ids):
            return layers
        cache = self._cache(layers, 1)
        for start in range(done, len(ids), PREFILL_CHUNK):
            chunk = torch.tensor([ids[start:start + PREFILL_CHUNK]], device=self.device)
            self.model(input_ids=chunk, **{self.cache_kw: cache}, use_cache=True, logits_to_keep=1)
            self.prefill_tokens += chunk.shape[1]
        return [(layer.keys, layer.values) for layer in cache.layers]

    # -- one call ------------------------------------------------------------------------------
    def run(self, ids: list[list[int]], params: SamplingParams,
            cached: PrefixCache | None) -> tuple[PrefixCache | None, list[list[list[int]]]]:
        """(the prefix cache to keep, token ids of `params.n` samples per prompt)."""
        config = self.model.config
        usual = config._attn_implementation
        grouped = usual in ("sdpa", "eager") and config.num_key_value_heads < config.num_attention_heads
        if grouped:
            _register_attention()
            config._attn_implementation = ATTENTION
        try:
            return self._run(ids, params, cached)
        finally:
            config._attn_implementation = usual

    def _run(self, ids: list[list[int]], params: SamplingParams,
             cached: PrefixCache | None) -> tuple[PrefixCache | None, list[list[list[int]]]]:
        shared = min(common_prefix(ids), min(len(s) for s in ids) - 1)
        shared = shared if shared >= MIN_PREFIX else 0
        key = tuple(ids[0][:shared])
        layers = self.prefix(key, cached)
        keep = (key, layers) if layers else cached
        seqs = [(p, j) for p in range(len(ids)) for j in range(params.n)]
        outputs: list[list[list[int]]] = [[[] for _ in range(params.n)] for _ in ids]
        bar = tqdm(total=len(seqs), desc="sample", unit="prog", disable=not self.progress, dynamic_ncols=True)
        start, generated = time.perf_counter(), 0
        for b in range(0, len(seqs), self.batch_size):
            batch = seqs[b:b + self.batch_size]
            for (p, j), tokens in zip(batch, self._decode(ids, shared, layers, [p for p, _ in batch], params, bar)):
                outputs[p][j] = tokens
                generated += len(tokens)
            bar.set_postfix(tok_s=f"{generated / max(time.perf_counter() - start, 1e-9):.1f}")
        bar.close()
        return keep, outputs

    def _decode(self, ids: list[list[int]], shared: int, layers: list[tuple[Any, Any]] | None,
                owners: list[int], params: SamplingParams, bar: Any) -> list[list[int]]:
        """Prefill the suffixes of the prompts in `owners`, then sample one sequence each."""
        import torch

        prompts = sorted(set(owners))
        suffixes = [ids[p][shared:] for p in prompts]
        width = max(map(len, suffixes))
        pad = self.tokenizer.pad_token_id
        tokens = torch.tensor([[pad] * (width - len(s)) + s for s in suffixes], device=self.device)
        mask = torch.tensor([[1] * shared + [0] * (width - len(s)) + [1] * len(s) for s in suffixes],
                            device=self.device)
        positions = torch.tensor([[shared + max(0, k - (width - len(s))) for k in range(width)] for s in suffixes],
                                 device=self.device)
        cache = self._cache(layers, len(prompts))
        logits = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions, **{self.cache_kw: cache},
                            use_cache=True, logits_to_keep=1).logits[:, -1, :]
        self.prefill_tokens += int(sum(map(len, suffixes)))
        row = torch.tensor([prompts.index(p) for p in owners], device=self.device)
        cache.batch_select_indices(row)
        logits, mask = logits[row], mask[row]
        next_pos = torch.tensor([len(ids[p]) for p in owners], device=self.device)

        active = list(range(len(owners)))  # batch row -> sequence index
        out: list[list[int]] = [[] for _ in owners]
        for _ in range(params.max_new_tokens):
            picked = pick_tokens(logits, params.temperature, params.top_p).tolist()
            keep_rows = []
            for r, (seq, token) in enumerate(zip(active, picked)):
                if token in self.eos:
                    continue
                out[seq].append(token)
                if params.stop and stopped(self.tokenizer.decode(out[seq], skip_special_tokens=True), params.stop):
                    continue
                keep_rows.append(r)
            bar.update(len(active) - len(keep_rows))
            if not keep_rows:
                return out
            if len(keep_rows) < len(active):
                index = torch.tensor(keep_rows, device=self.device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                picked = [picked[r] for r in keep_rows]
                active = [active[r] for r in keep_rows]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            step = torch.tensor(picked, device=self.device).unsqueeze(1)
            logits = self.model(input_ids=step, attention_mask=mask, position_ids=next_pos.unsqueeze(1),
                                **{self.cache_kw: cache}, use_cache=True).logits[:, -1, :]
            next_pos = next_pos + 1
        bar.update(len(active))
        return out
