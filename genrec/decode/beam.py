"""Beam search constrained by the trie of valid item token sequences, batched over users.

Each prompt is encoded once (one forward over the left-padded batch, after the prefix all
prompts share, such as the system prompt, has been encoded once for the batch); its KV cache is
then indexed for its beams, never recomputed. Every step runs the model on one token per beam and
expands all beams of all users at once with tensor operations on the trie's CSR arrays: the
candidates of a beam are exactly the children of its trie node, so no invalid token is ever
scored and no invalid tuple can come out. A candidate that reaches a leaf is a finished item;
tuples of different lengths (TID/RID items ending in an end token) are handled the same way.

With ``beams >= number of items`` nothing is ever pruned, so the result is the exact ranking
of every item by the model's log-probability of its token sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from genrec.index.trie import Trie


@dataclass
class Decoder:
    """The model pieces beam search needs.

    ``body(input_ids, attention_mask, position_ids, past_key_values)`` returns an object with
    ``last_hidden_state`` and ``past_key_values``; ``head(hidden)`` returns vocabulary logits.
    """

    body: Callable
    head: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    pad_id: int = 0
    module: object = None  # the Hugging Face decoder itself (enables :class:`SharedPromptSteps`)
    shared_prompt: bool = True  # use the shared-prompt steps when the architecture allows
    share_prefix: bool = True  # encode the prompts' common prefix once (causal LMs; not encoder-decoders)
    renorm: bool = False  # each step's log-probabilities renormalised over the trie node's children (softmax="trie")
    first_token: int = 0  # ``head`` gives the logits of tokens first_token.. only (the others can never be written)

    @classmethod
    def from_hf(cls, model, pad_id: int = 0) -> Decoder:
        """A Hugging Face causal LM (decoder + lm_head)."""
        body = model.get_decoder()
        head = model.get_output_embeddings()
        return cls(_hf_body(body), lambda h: head(h).float(), next(model.parameters()).device, pad_id, body)

    @classmethod
    def from_codelm(cls, lm, pad_id: int = 0, body=None) -> Decoder:
        """A fine-tuned :class:`genrec.llm.model.CodeLM`; ``body``: a stand-in for its decoder body
        (e.g. a quantised copy)."""
        body = lm.body if body is None else body
        codes_only = getattr(lm, "softmax", "full") in ("codes", "trie")  # a softmax over the code tokens only
        return cls(_hf_body(body), lm.code_logits if codes_only else lm.logits, next(lm.parameters()).device, pad_id,
                   body, renorm=lm.softmax == "trie" if codes_only else False, first_token=lm.n_old if codes_only else 0)


def _hf_body(body):
    import inspect

    # transformers 5 renamed past_key_values to cache (the output keeps past_key_values)
    name = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"

    def run(input_ids, attention_mask, position_ids, past_key_values=None):
        return body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=True, **{name: past_key_values})

    return run


def cold_nodes(trie: Trie, cold_items: Sequence[int]) -> np.ndarray:
    """``cold[n]``: every item under node n is cold (added after training: the model never wrote
    the tokens that lead there). Children have larger ids than their parents."""
    is_cold = np.zeros(trie.n_items, dtype=bool)
    is_cold[np.asarray(list(cold_items), dtype=np.int64)] = True
    cold = np.zeros(trie.n_nodes, dtype=bool)
    for n in range(trie.n_nodes - 1, -1, -1):
        s, e = trie.child_ptr[n], trie.child_ptr[n + 1]
        cold[n] = cold[trie.child_node[s:e]].all() if e > s else bool(trie.item[n] >= 0 and is_cold[trie.item[n]])
    return cold


def edge_prior(trie: Trie, weight: np.ndarray) -> np.ndarray:
    """``log p(child | node)`` of every edge of the trie when items are drawn in proportion to
    ``weight`` (e.g. training popularity + 1): summed over an item's edges, its log share of the
    weight. Children have larger ids than their parents."""
    weight = np.asarray(weight, dtype=np.float64)
    if len(weight) != trie.n_items or (weight <= 0).any():
        raise ValueError(f"edge_prior: expected {trie.n_items} positive item weights")
    mass = np.zeros(trie.n_nodes)
    leaf = trie.item >= 0
    mass[leaf] = weight[trie.item[leaf]]
    for n in range(trie.n_nodes - 1, -1, -1):
        s, e = trie.child_ptr[n], trie.child_ptr[n + 1]
        if e > s:
            mass[n] = mass[trie.child_node[s:e]].sum()
    parent = np.repeat(np.arange(trie.n_nodes), np.diff(trie.child_ptr))
    return np.log(mass[trie.child_node] / mass[parent])


@dataclass
class TrieTensors:
    """The trie's CSR arrays on the decoding device, which nodes lead only to cold items, and each
    edge's popularity prior ``log p(child | node)`` (for popularity-adjusted ranking)."""

    ptr: torch.Tensor
    token: torch.Tensor
    node: torch.Tensor
    item: torch.Tensor
    max_depth: int
    cold: torch.Tensor | None = None
    prior: torch.Tensor | None = None

    @classmethod
    def of(cls, trie: Trie, device: torch.device, cold_items: Sequence[int] | None = None,
           item_weight: np.ndarray | None = None) -> TrieTensors:
        t = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
        cold = None
        if cold_items is not None and len(cold_items):
            cold = torch.as_tensor(cold_nodes(trie, cold_items), device=device)
        prior = None
        if item_weight is not None:
            prior = torch.as_tensor(edge_prior(trie, item_weight), dtype=torch.float32, device=device)
        return cls(t(trie.child_ptr), t(trie.child_token), t(trie.child_node), t(trie.item), trie.max_depth, cold, prior)


def _backoff(tt: TrieTensors, beam: torch.Tensor, edge: torch.Tensor, logp: torch.Tensor, n_beams: int,
             renorm: bool = False) -> torch.Tensor:
    """Token log-probabilities with cold edges (leading only to items added after training) scored
    as the mean probability of the same beam's warm edges: the model has never written a cold
    item's last codes after this prefix, so its own probability for them says little. With
    ``renorm`` (a trie-softmax model) each beam's step is first renormalised over its warm edges, so
    a cold edge scores the mean of its warm siblings' renormalised probabilities and the warm edges
    keep exactly the scores they have without the added items.

    A beam without warm edges (every item under it was added) keeps the model's values,
    renormalised over all its edges; an edge the model has no value for (-inf: the own token of an
    item added to an id-level index, which has no model row) gets an even share of the beam."""
    if tt.cold is None:
        return _renormalize(logp, beam, n_beams) if renorm else logp
    cold = tt.cold[tt.node[edge]]
    if not bool(cold.any()):
        return _renormalize(logp, beam, n_beams) if renorm else logp
    zeros = lambda: torch.zeros(n_beams, dtype=logp.dtype, device=logp.device)  # noqa: E731
    warm = (~cold).to(logp.dtype)
    count = zeros().index_add_(0, beam, warm)
    orphan = count[beam] == 0  # an edge of a beam without warm edges
    if bool(orphan.any()):
        edges = zeros().index_add_(0, beam, torch.ones_like(logp))
        logp = torch.where(orphan & torch.isneginf(logp), -torch.log(edges[beam]), logp)
    if renorm:
        logp = _renormalize(logp, beam, n_beams, over=~cold | orphan)
    mass = zeros().index_add_(0, beam, logp.exp() * warm)
    mean = torch.log(mass / count.clamp(min=1))
    return torch.where(cold & ~orphan, mean[beam], logp)


@dataclass
class BeamResult:
    items: np.ndarray  # [users, k] item indices, -1 where fewer than k items were found
    scores: np.ndarray  # [users, k] log-probabilities of the items' token sequences


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    first = list(prompts[0])
    n = len(first)
    for p in prompts[1:]:
        m = 0
        for a, b in zip(first[:n], p, strict=False):
            if a != b:
                break
            m += 1
        n = m
    return n


def _renormalize(logp: torch.Tensor, beam: torch.Tensor, n_beams: int, over: torch.Tensor | None = None) -> torch.Tensor:
    """Candidate log-probabilities minus the log-sum-exp of their beam's candidates (``over``: of
    those of its candidates only): each beam's step becomes a distribution over its trie node's
    children. A candidate at -inf stays there."""
    use = logp if over is None else logp.masked_fill(~over, float("-inf"))
    top = torch.full((n_beams,), float("-inf"), dtype=logp.dtype, device=logp.device)
    top = top.scatter_reduce(0, beam, use, "amax")
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    mass = torch.zeros(n_beams, dtype=logp.dtype, device=logp.device).index_add_(0, beam, (use - top[beam]).exp())
    return torch.where(torch.isneginf(logp), logp, logp - (top + mass.log())[beam])


def _expand(trie: TrieTensors, nodes: torch.Tensor, alive: torch.Tensor):
    """Every (beam, child edge) pair of the live beams: (beam index, edge index)."""
    counts = (trie.ptr[nodes + 1] - trie.ptr[nodes]) * alive
    beam = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), counts)
    first = torch.cumsum(counts, 0) - counts
    edge = trie.ptr[nodes][beam] + torch.arange(len(beam), device=nodes.device) - first[beam]
    return beam, edge


def _layer_kv(cache, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of layer ``i`` of a Hugging Face cache, [batch, kv_heads, length, head_dim]."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class SharedPromptSteps:
    """Beam steps of a Llama-family decoder where each user's beams read one copy of the prompt's
    keys and values (a broadcast matmul per user), and only the few generated tokens' keys and
    values are per beam and reordered between steps. The generic path instead copies the whole
    prompt cache for every beam at every step, which dominates decoding time on a CPU.

    Attention is computed in two parts (prompt, generated tokens) under one softmax; it equals the
    model's own attention, so results match the generic path to float rounding."""

    TYPES = ("llama", "mistral", "qwen2")

    def __init__(self, body, head, prompt_cache, prompt_mask: torch.Tensor, beams: int):
        self.body, self.head, self.B = body, head, beams
        self.layers = list(body.layers)
        self.kv = [_layer_kv(prompt_cache, i) for i in range(len(self.layers))]  # [U, Hkv, L, d], never copied
        neg = torch.finfo(self.kv[0][0].dtype).min
        self.bias = torch.zeros(prompt_mask.shape, dtype=self.kv[0][0].dtype, device=prompt_mask.device)
        self.bias = self.bias.masked_fill(prompt_mask == 0, neg)[:, None, None, None, :]  # [U, 1, 1, 1, L]
        self.gen: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)

    @classmethod
    def supports(cls, body) -> bool:
        cfg = getattr(body, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in cls.TYPES or getattr(cfg, "sliding_window", None):
            return False
        att = getattr(body.layers[0], "self_attn", None)
        need = ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim")
        return att is not None and all(hasattr(att, n) for n in need) and not hasattr(att, "q_norm") \
            and hasattr(body, "rotary_emb") and hasattr(body, "norm")

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, src: torch.Tensor, users: torch.Tensor | None = None,
             keep: bool = True) -> torch.Tensor:
        """Log-probabilities [N, V] after feeding one token per beam slot; ``src`` is the slot of the
        previous step each slot continues. ``users``: the slots belong to these users only (the
        same number each, in user order; default all). ``keep``: remember the slots' keys and
        values for a next step (not needed at the last level)."""
        bias = self.bias if users is None else self.bias[users]
        U = bias.shape[0]
        B = len(tokens) // U
        h = self.body.embed_tokens(tokens)  # [N, D]
        cos, sin = self.body.rotary_emb(h[:, None], positions[:, None])  # [N, 1, d]
        for i, layer in enumerate(self.layers):
            att = layer.self_attn
            x = layer.input_layernorm(h)
            d = att.head_dim
            q = att.q_proj(x).view(len(h), -1, d)
            k = att.k_proj(x).view(len(h), -1, d)
            v = att.v_proj(x).view(len(h), -1, d)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            kv_heads = k.shape[1]
            groups = q.shape[1] // kv_heads
            old = self.gen[i]
            kg = k[:, :, None] if old is None else torch.cat([old[0][src], k[:, :, None]], 2)  # [N, Hkv, t, d]
            vg = v[:, :, None] if old is None else torch.cat([old[1][src], v[:, :, None]], 2)
            if keep:
                self.gen[i] = (kg, vg)
            kp, vp = self.kv[i] if users is None else (self.kv[i][0][users], self.kv[i][1][users])
            L, t = kp.shape[2], kg.shape[2]
            q5 = q.view(U, B, kv_heads, groups, d)
            # prompt part: every beam of user u against user u's single copy of the prompt
            sp = torch.matmul(q5.permute(0, 2, 1, 3, 4).reshape(U, kv_heads, B * groups, d), kp.transpose(-1, -2))
            sp = sp.view(U, kv_heads, B, groups, L).permute(0, 2, 1, 3, 4) * att.scaling + bias
            sg = torch.matmul(q5, kg.view(U, B, kv_heads, t, d).transpose(-1, -2)) * att.scaling  # [U, B, Hkv, G, t]
            w = torch.softmax(torch.cat([sp, sg], -1).float(), -1).to(q.dtype)
            wp, wg = w[..., :L], w[..., L:]
            op = torch.matmul(wp.permute(0, 2, 1, 3, 4).reshape(U, kv_heads, B * groups, L), vp)
            op = op.view(U, kv_heads, B, groups, d).permute(0, 2, 1, 3, 4)
            og = torch.matmul(wg, vg.view(U, B, kv_heads, t, d))
            h = h + att.o_proj((op + og).reshape(len(h), -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return torch.log_softmax(self.head(self.body.norm(h)), -1)


def _encode_prompts(decoder: Decoder, prompts: Sequence[Sequence[int]]):
    """One forward over the left-padded prompts (their common prefix, such as the system prompt,
    encoded once for all): (log-probabilities of the next token [U, V], KV cache, attention mask)."""
    dev, n_users = decoder.device, len(prompts)
    shared = _common_prefix(prompts) if n_users > 1 and decoder.share_prefix else 0
    shared = min(shared, min(len(p) for p in prompts) - 1)  # every prompt keeps a token of its own
    cache = None
    if shared > 0:
        head = torch.as_tensor([list(prompts[0][:shared])], dtype=torch.long, device=dev)
        cache = decoder.body(head, torch.ones_like(head), torch.arange(shared, device=dev)[None]).past_key_values
        cache.batch_repeat_interleave(n_users)
    rest = [p[shared:] for p in prompts]
    width = max(len(p) for p in rest)
    ids = torch.full((n_users, width), decoder.pad_id, dtype=torch.long, device=dev)
    att = torch.zeros((n_users, width), dtype=torch.long, device=dev)
    for u, p in enumerate(rest):  # left padding: every prompt ends at the last column
        ids[u, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        att[u, width - len(p) :] = 1
    pos = shared + (att.cumsum(-1) - 1).clamp(min=0)
    att = torch.cat([torch.ones((n_users, shared), dtype=torch.long, device=dev), att], 1)
    out = decoder.body(ids, att, pos, cache)
    return torch.log_softmax(decoder.head(out.last_hidden_state[:, -1]), -1), out.past_key_values, att


class _Steps:
    """One token per slot (``slots`` per prompt) after the encoded prompts: the shared-prompt
    steps when the architecture allows, else the generic path with a prompt cache copy per slot
    (which steps every slot at once: no ``users`` subsets)."""

    def __init__(self, decoder: Decoder, cache, att: torch.Tensor, slots: int):
        self.decoder, self.cache, self.fast = decoder, cache, None
        if decoder.shared_prompt and decoder.module is not None and SharedPromptSteps.supports(decoder.module):
            self.fast = SharedPromptSteps(decoder.module, decoder.head, cache, att, slots)
        else:
            cache.reorder_cache(torch.arange(len(att), device=att.device).repeat_interleave(slots))
            self.att = att.repeat_interleave(slots, 0)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, src: torch.Tensor, alive: torch.Tensor,
             users: torch.Tensor | None = None, keep: bool = True) -> torch.Tensor:
        """Log-probabilities [N, V] after feeding ``tokens``; slot i continues slot ``src[i]``;
        a slot with ``alive`` 0 is padding (its token is masked). ``users`` and ``keep``: see
        :meth:`SharedPromptSteps.step` (the shared-prompt path only)."""
        if self.fast is not None:
            return self.fast.step(tokens, positions, src, users, keep)
        self.cache.reorder_cache(src)
        self.att = torch.cat([self.att[src], alive.long().unsqueeze(1)], 1)
        out = self.decoder.body(tokens.unsqueeze(1), self.att, positions.unsqueeze(1), self.cache)
        self.cache = out.past_key_values
        return torch.log_softmax(self.decoder.head(out.last_hidden_state[:, -1]), -1)


def _token_logp(decoder: Decoder, logp: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``logp[rows[i], column of tokens[i]]``; -inf for a token outside the head's columns (below
    its first, or past the model's vocabulary: an item token added after training, which has no
    row), and no such column is read."""
    col = tokens - decoder.first_token
    outside = (col < 0) | (col >= logp.shape[-1])
    return logp[rows, torch.where(outside, 0, col)].masked_fill(outside, float("-inf"))


class _Found:
    """Each user's best ``k`` finished items so far, as tensors, best first (ties: lower item first)."""

    def __init__(self, n_users: int, k: int, device: torch.device):
        self.n_users, self.k = n_users, k
        self.user = torch.zeros(0, dtype=torch.long, device=device)
        self.item = torch.zeros(0, dtype=torch.long, device=device)
        self.score = torch.zeros(0, device=device)

    def add(self, user: torch.Tensor, item: torch.Tensor, score: torch.Tensor) -> None:
        user, item, score = torch.cat([self.user, user]), torch.cat([self.item, item]), torch.cat([self.score, score])
        order = torch.argsort(item, stable=True)
        order = order[torch.argsort(score[order], descending=True, stable=True)]
        order = order[torch.argsort(user[order], stable=True)]
        rank = _rank_in_group(user[order], self.n_users)
        order = order[rank < self.k]
        self.user, self.item, self.score = user[order], item[order], score[order]

    def kth(self) -> torch.Tensor:
        """[users] the k-th best score found so far (-inf while fewer than k)."""
        out = torch.full((self.n_users,), float("-inf"), device=self.score.device)
        last = _rank_in_group(self.user, self.n_users) == self.k - 1
        out[self.user[last]] = self.score[last]
        return out

    def result(self) -> BeamResult:
        items = np.full((self.n_users, self.k), -1, dtype=np.int64)
        best = np.full((self.n_users, self.k), -np.inf, dtype=np.float64)
        user, rank = self.user.cpu().numpy(), _rank_in_group(self.user, self.n_users).cpu().numpy()
        items[user, rank] = self.item.cpu().numpy()
        best[user, rank] = self.score.double().cpu().numpy()
        return BeamResult(items, best)


def _rank_in_group(group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Position of each entry within its group, for entries sorted by group."""
    start = torch.searchsorted(group, torch.arange(n_groups, device=group.device))
    return torch.arange(len(group), device=group.device) - start[group]


def _banned(tt: TrieTensors, exclude: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """[users, trie nodes]: the leaves of each user's excluded items."""
    banned = torch.zeros((len(exclude), len(tt.item)), dtype=torch.bool, device=device)
    leaf_of = torch.full((int(tt.item.max()) + 1,), -1, dtype=torch.long, device=device)
    leaves = torch.nonzero(tt.item >= 0)[:, 0]
    leaf_of[tt.item[leaves]] = leaves
    for u, items in enumerate(exclude):
        ids = torch.as_tensor([int(i) for i in items if 0 <= int(i) < len(leaf_of)], dtype=torch.long, device=device)
        nodes_u = leaf_of[ids]
        banned[u, nodes_u[nodes_u >= 0]] = True
    return banned


@dataclass
class _Search:
    """What scoring a level's candidates needs besides the beams themselves."""

    decoder: Decoder
    trie: TrieTensors
    slot_user: torch.Tensor  # [slots] the user of each beam slot
    pop_alpha: float
    banned: torch.Tensor | None

    def candidates(self, nodes: torch.Tensor, alive: torch.Tensor, scores: torch.Tensor, logp: torch.Tensor,
                   rows: torch.Tensor):
        """Every child edge of the live slots with its score: (slot, edge, score); slot i's
        next-token log-probabilities are ``logp[rows[i]]``."""
        tt = self.trie
        beam, edge = _expand(tt, nodes, alive)
        lp = _backoff(tt, beam, edge, _token_logp(self.decoder, logp, rows[beam], tt.token[edge]), len(nodes),
                      self.decoder.renorm)
        if self.pop_alpha:
            lp = lp - self.pop_alpha * tt.prior[edge]
        cand = scores[beam] + lp
        if self.banned is not None:
            cand = cand.masked_fill(self.banned[self.slot_user[beam], tt.node[edge]], float("-inf"))
        return beam, edge, cand

    def bound(self, nodes: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """[slots] the most a slot's score can still gain: a step's log-probability is at most 0,
        so 0 unless the popularity adjustment adds ``-pop_alpha * prior`` (its largest child's)."""
        out = torch.zeros(len(nodes), device=nodes.device)
        if not self.pop_alpha:
            return out
        beam, edge = _expand(self.trie, nodes, alive)
        return out.scatter_reduce(0, beam, -self.pop_alpha * self.trie.prior[edge], "amax", include_self=False)


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    prompts: Sequence[Sequence[int]],
    trie: Trie | TrieTensors,
    beams: int = 20,
    k: int = 10,
    pop_alpha: float = 0.0,
    exclude: Sequence[Sequence[int]] | None = None,
    round_beams: int | None = 5,
) -> BeamResult:
    """Top-``k`` items for each prompt by constrained beam search with ``beams`` beams; the items in
    ``exclude[u]`` (a user's history, say) never finish for prompt u, so they take no slot.

    ``pop_alpha`` > 0 ranks by ``log p(item | prompt) - pop_alpha * log p_pop(item)``, step by step
    through the trie's edge priors (``trie.prior``): popular items lose their head start and
    beams keep rarer items the model still rates (logit adjustment); 0 ranks by the model alone.

    ``round_beams``: the last level (where every child is an item) is stepped this many beams
    per user at a time, best beams first, and a beam whose score (plus what it can still gain)
    is below the user's k-th best item found so far is never stepped: no item under it could
    enter the top k, so the lists are those of stepping every beam (up to exact score ties),
    for fewer model rows. None steps every beam at once (also the generic, non-Llama path)."""
    if pop_alpha and (not isinstance(trie, TrieTensors) or trie.prior is None):
        raise ValueError("pop_alpha needs a TrieTensors with item weights (TrieTensors.of(..., item_weight=...))")
    dev = decoder.device
    tt = trie if isinstance(trie, TrieTensors) else TrieTensors.of(trie, dev)
    n_users, B = len(prompts), beams
    logp, cache, att = _encode_prompts(decoder, prompts)
    lengths = att.sum(-1)

    # state per beam slot (U * B of them, a user's in rank order): trie node, score, alive
    slot_user = torch.arange(n_users, device=dev).repeat_interleave(B)
    nodes = torch.zeros(n_users * B, dtype=torch.long, device=dev)
    scores = torch.zeros(n_users * B, device=dev)
    alive = torch.zeros(n_users * B, dtype=torch.long, device=dev)
    alive[::B] = 1  # one live beam per user at the root
    rows = slot_user  # the row of ``logp`` each slot reads: its user's prompt, then its own
    steps = _Steps(decoder, cache, att, B)
    found = _Found(n_users, k, dev)
    search = _Search(decoder, tt, slot_user, pop_alpha, None if exclude is None else _banned(tt, exclude, dev))
    slot_of = torch.arange(n_users * B, device=dev)
    for depth in range(tt.max_depth):
        beam, edge, cand = search.candidates(nodes, alive, scores, logp, rows)
        if len(beam) == 0:
            break
        # the best B candidates of each user: sort by (user, -score), rank within the user
        order = torch.argsort(cand, descending=True, stable=True)
        order = order[torch.argsort(slot_user[beam][order], stable=True)]
        keep = order[_rank_in_group(slot_user[beam][order], n_users) < B]
        keep = keep[torch.isfinite(cand[keep])]
        item = tt.item[tt.node[edge[keep]]]
        finished = item >= 0
        found.add(slot_user[beam[keep[finished]]], item[finished], cand[keep[finished]])
        cont = keep[~finished]
        if len(cont) == 0:
            break
        # place the continuing candidates into their user's slots, in rank order
        cu = slot_user[beam[cont]]
        slot = cu * B + _rank_in_group(cu, n_users)
        nodes = torch.zeros_like(nodes).index_put_((slot,), tt.node[edge[cont]])
        scores = torch.full_like(scores, -float("inf")).index_put_((slot,), cand[cont])
        alive = torch.zeros_like(alive).index_put_((slot,), torch.ones_like(slot))
        src = slot_of.clone().index_put_((slot,), beam[cont])  # the slot each slot continues
        tokens = torch.full((n_users * B,), decoder.pad_id, dtype=torch.long, device=dev).index_put_(
            (slot,), tt.token[edge[cont]])
        positions = lengths[slot_user] + depth
        if round_beams and depth + 2 == tt.max_depth and steps.fast is not None and k <= B:
            _last_level(steps, search, found, nodes, alive, scores, tokens, positions, src, B, round_beams)
            break
        logp, rows = steps.step(tokens, positions, src, alive), slot_of
    return found.result()


def _last_level(steps: _Steps, search: _Search, found: _Found, nodes, alive, scores, tokens, positions, src,
                B: int, chunk: int) -> None:
    """The last level's beams (each child an item), ``chunk`` slots per user at a time in rank
    order, skipping the slots that cannot reach their user's top k (see :func:`beam_search`).
    Renormalised over the trie's children, a beam's only child has log-probability exactly 0
    whatever the model says, so such beams (e.g. above a level of one token per item) finish
    without a step."""
    n_users, dev, tt = found.n_users, nodes.device, search.trie
    if search.decoder.renorm:
        only = alive.bool() & (tt.ptr[nodes + 1] - tt.ptr[nodes] == 1)
        if bool(only.any()):
            any_logp = torch.zeros((1, int(tt.token.max()) - search.decoder.first_token + 1), device=dev)
            beam, edge, cand = search.candidates(nodes, only.long(), scores, any_logp, torch.zeros_like(nodes))
            ok = torch.isfinite(cand)
            found.add(search.slot_user[beam[ok]], tt.item[tt.node[edge[ok]]], cand[ok])
            alive = alive * (~only).long()
    bound = scores + search.bound(nodes, alive)
    for lo in range(0, B, chunk):
        cols = torch.arange(lo, min(lo + chunk, B), device=dev)
        slots = (torch.arange(n_users, device=dev)[:, None] * B + cols).reshape(-1)
        need = (alive[slots].bool() & (bound[slots] >= found.kth()[search.slot_user[slots]])).view(n_users, -1)
        users = torch.nonzero(need.any(1))[:, 0]
        if len(users) == 0:
            continue
        slots = (users[:, None] * B + cols).reshape(-1)
        live = need[users].reshape(-1).long()
        logp = steps.step(tokens[slots], positions[slots], src[slots], live, users=users, keep=False)
        rows = torch.zeros_like(nodes).index_put_((slots,), torch.arange(len(slots), device=dev))
        beam, edge, cand = search.candidates(nodes, torch.zeros_like(alive).index_put_((slots,), live), scores, logp, rows)
        ok = torch.isfinite(cand)
        found.add(search.slot_user[beam[ok]], tt.item[tt.node[edge[ok]]], cand[ok])


def rank_prompts(decoder: Decoder, prompts: Sequence[Sequence[int]], trie: Trie | TrieTensors, beams: int = 20,
                 k: int = 10, batch: int = 8, pop_alpha: float = 0.0,
                 exclude: Sequence[Sequence[int]] | None = None, round_beams: int | None = 5) -> BeamResult:
    """:func:`beam_search` over many prompts, batched by length (little left padding), in input order."""
    tt = trie if isinstance(trie, TrieTensors) else TrieTensors.of(trie, decoder.device)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    items = np.full((len(prompts), k), -1, dtype=np.int64)
    scores = np.full((len(prompts), k), -np.inf)
    for lo in range(0, len(order), batch):
        rows = order[lo : lo + batch]
        res = beam_search(decoder, [prompts[r] for r in rows], tt, beams, k, pop_alpha,
                          None if exclude is None else [exclude[r] for r in rows], round_beams)
        items[rows], scores[rows] = res.items, res.scores
    return BeamResult(items, scores)


@torch.no_grad()
def score_sequences(decoder: Decoder, prompts: Sequence[Sequence[int]], seqs: np.ndarray,
                    trie: TrieTensors | None = None) -> np.ndarray:
    """Log-probability of each of K token sequences after each prompt, teacher-forced: ``seqs`` is
    [U, K, D] (-1 after the end of a shorter sequence), the result [U, K]. It is the score beam
    search gives the same sequence (without the cold-item backoff), at the cost of one beam search
    step per token. A decoder that renormalises over the trie's children needs ``trie`` (the
    sequences must be in it)."""
    if decoder.renorm and trie is None:
        raise ValueError("this model's steps are renormalised over the trie's children: pass the trie")
    seqs = np.asarray(seqs, dtype=np.int64)
    n_users, K, D = seqs.shape
    dev = decoder.device
    logp, cache, att = _encode_prompts(decoder, prompts)
    lengths = att.sum(-1)
    steps = _Steps(decoder, cache, att, K)
    tok = torch.as_tensor(seqs.reshape(n_users * K, D), device=dev)
    slot_user = torch.arange(n_users, device=dev).repeat_interleave(K)
    src = torch.arange(n_users * K, device=dev)
    rows = slot_user
    total = torch.zeros(n_users * K, dtype=torch.float64, device=dev)
    nodes = torch.zeros(n_users * K, dtype=torch.long, device=dev)
    for d in range(D):
        t = tok[:, d]
        live = t >= 0
        safe = torch.where(live, t, torch.full_like(t, decoder.pad_id))
        lp = _token_logp(decoder, logp, rows, safe)
        if decoder.renorm:  # the sequence's token among its trie node's children
            beam, edge = _expand(trie, nodes, live.long())
            cand = _renormalize(_token_logp(decoder, logp, rows[beam], trie.token[edge]), beam, len(nodes))
            hit = trie.token[edge] == safe[beam]
            lp = torch.full_like(lp, float("-inf"))
            lp[beam[hit]] = cand[hit]
            nodes = torch.zeros_like(nodes)
            nodes[beam[hit]] = trie.node[edge[hit]]
        total += torch.where(live, lp.double(), 0.0)
        if d + 1 < D and bool((tok[:, d + 1] >= 0).any()):
            logp, rows = steps.step(safe, lengths[slot_user] + d, src, live), src
    return total.view(n_users, K).cpu().numpy()
