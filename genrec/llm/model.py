"""The LLM recommender as a module: a causal LM whose vocabulary is extended by the item code
tokens, with the loss (and the output layer) computed only where a target token is.

- The old vocabulary rows stay frozen in LoRA mode; the new code tokens get their own trainable
  input rows and, for untied models, trainable output rows: nothing else of the 49k-row
  embedding matrix is touched, so no optimizer state or weight decay ever reaches it.
- The output layer over the whole vocabulary is applied only to the hidden states that predict a
  target token (a few per sample), not to every position of the prompt.
- ``softmax="codes"`` normalises a code target over the code tokens only, the only tokens the
  constrained decoder can choose: the output layer then has a thousand rows instead of 49k
  (text targets keep the full vocabulary), and decoding normalises the same way.
- ``softmax="trie"`` normalises a code target over the codes the trie of valid items allows
  after the item's codes before it (:meth:`CodeLM.set_trie`): each step of an item is a choice
  among its valid children only, in training and in constrained decoding alike.
- ``mode="full"`` trains every backbone weight as well (on CPU, full fine-tuning is not slower
  than LoRA; see docs/method.md, "The backbone").

Frozen weights may be bf16; trainable ones are fp32 and the forward runs under autocast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import GenrecError


class CodeEmbedding(nn.Module):
    """Input embedding = frozen rows of the backbone's vocabulary + trainable rows of the new tokens."""

    def __init__(self, old: torch.Tensor, new: torch.Tensor, train_old: bool = False):
        super().__init__()
        self.n_old = old.shape[0]
        self.old = nn.Parameter(old, requires_grad=train_old)
        self.new = nn.Parameter(new.float(), requires_grad=new.shape[0] > 0)  # no new tokens: nothing to train

    @property
    def weight(self) -> torch.Tensor:  # what generic code (e.g. resizing checks) reads
        return torch.cat([self.old, self.new.to(self.old.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(ids.clamp(max=self.n_old - 1), self.old)
        if not self.new.shape[0]:  # a backbone without added tokens (the yes/no ranker of genrec.llm.tallrec)
            return out
        # no data-dependent branch: every trainable row takes part in every forward (DDP needs it)
        extra = F.embedding((ids - self.n_old).clamp(min=0), self.new).to(out.dtype)
        return torch.where((ids >= self.n_old).unsqueeze(-1), extra, out)


class CodeLM(nn.Module):
    """Wraps a Hugging Face causal LM (optionally with LoRA adapters) for code-token training."""

    def __init__(self, model, n_new: int, mode: str = "lora", lora: dict | None = None, softmax: str = "full",
                 untie_codes: bool = False, train_text_rows: bool = True, dropout: float = 0.0):
        """``untie_codes``: for a backbone that ties its input and output embeddings, give the code
        tokens output rows of their own (a copy of their input rows to start), so that reading a
        code and writing it are learned separately; the text rows stay tied. ``train_text_rows``
        (full mode): whether the backbone's own vocabulary rows train too (off: a corpus written
        mostly in codes need not carry an optimizer state for 49k text rows). ``dropout``: in
        training, dropout on the output of every attention and MLP block before it joins the
        residual stream (the backbone itself has none); nothing changes in eval mode."""
        super().__init__()
        if mode not in ("lora", "full"):
            raise GenrecError(f"train mode {mode!r}: expected 'lora' or 'full'")
        if softmax not in ("full", "codes", "trie"):
            raise GenrecError(f"softmax {softmax!r}: expected 'full', 'codes' or 'trie'")
        self.softmax = softmax
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        self.tied = head is None or head.weight is emb
        n_total = emb.shape[0]
        n_old = n_total - n_new
        train_old = mode == "full"
        for p in model.parameters():
            p.requires_grad_(train_old)
        if mode == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", bias="none", **(lora or {})))
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body = base.get_decoder()
        self.embed = CodeEmbedding(emb.data[:n_old].clone(), emb.data[n_old:].clone(), train_old and train_text_rows)
        self.body.embed_tokens = self.embed
        if self.tied:
            self.out_old = None
            self.out_new = nn.Parameter(self.embed.new.data.clone(), requires_grad=n_new > 0) if untie_codes else None
        else:
            w = base.get_output_embeddings().weight.data
            self.out_old = nn.Parameter(w[:n_old].clone(), requires_grad=train_old and train_text_rows)
            self.out_new = nn.Parameter(w[n_old:].clone().float(), requires_grad=n_new > 0)
        base.lm_head = None  # never computed over every position; see head_weight
        self.dropout = float(dropout)
        self.distill_weight = 0.0  # set by the trainer with train.distill
        if self.dropout > 0:
            for layer in self.body.layers:
                for block in (layer.self_attn.o_proj, layer.mlp):
                    block.register_forward_hook(self._drop)
        self.n_old, self.n_new = n_old, n_new
        # softmax="trie": [trie nodes, n_new] child node per code (-1: none), and each code token's depth
        self.register_buffer("child", None, persistent=False)
        self.register_buffer("level", None, persistent=False)

    def _drop(self, module, inputs, output):
        return F.dropout(output, self.dropout, self.training)

    def set_trie(self, item_tokens: list[list[int]]) -> None:
        """The trie of the items' token sequences, for ``softmax="trie"``: a dense child table over the
        code tokens and the level of each code token (a code token must occur at one depth only)."""
        from genrec.index.trie import Trie

        trie = Trie(item_tokens)
        child = np.full((trie.n_nodes, self.n_new), -1, dtype=np.int64)
        level = np.full(self.n_new, -1, dtype=np.int64)
        depth = np.zeros(trie.n_nodes, dtype=np.int64)
        for node in range(trie.n_nodes):  # children have larger ids than their parents
            toks, nodes = trie.children(node)
            if len(toks) and (toks.min() < self.n_old or toks.max() >= self.n_old + self.n_new):
                raise GenrecError("softmax='trie' needs items written in code tokens only")
            child[node, toks - self.n_old] = nodes
            depth[nodes] = depth[node] + 1
            seen = level[toks - self.n_old]
            if ((seen >= 0) & (seen != depth[node])).any():
                raise GenrecError("softmax='trie': a code token occurs at two depths of the trie")
            level[toks - self.n_old] = depth[node]
        dev = self.embed.new.device
        self.child, self.level = torch.as_tensor(child, device=dev), torch.as_tensor(level, device=dev)

    def trie_nodes(self, input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The trie node before each code target at (rows, cols): the walk over the item's codes that
        precede it in the row (an item's codes are consecutive)."""
        lv = self.level[input_ids[rows, cols] - self.n_old]
        if bool((lv < 0).any()):
            raise GenrecError("a code target is not in the trie of the index's items")
        node = torch.zeros_like(rows)
        for j in range(int(lv.max()) if len(lv) else 0):
            sel = lv > j
            tok = input_ids[rows[sel], cols[sel] - lv[sel] + j] - self.n_old
            node[sel] = self.child[node[sel], tok]
        if bool((node < 0).any()):
            raise GenrecError("a code target's prefix is not in the trie of the index's items")
        return node

    def _heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(old rows, code rows) of the output layer: the input embedding's where tied."""
        return (self.embed.old if self.out_old is None else self.out_old,
                self.embed.new if self.out_new is None else self.out_new)

    def head_weight(self, dtype: torch.dtype) -> torch.Tensor:
        old, new = self._heads()
        return torch.cat([old.to(dtype), new.to(dtype)])

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = self._mask_4d(attention_mask)
        return self.body(input_ids=input_ids, attention_mask=attention_mask, **kw)

    def _mask_4d(self, allowed: torch.Tensor) -> torch.Tensor:
        """A [batch, 1, T, T] boolean mask (True = may attend) in the form the attention kernel
        takes: SDPA and flex take it as is, eager adds it to the scores."""
        impl = getattr(self.model.config, "_attn_implementation", "sdpa") or "sdpa"
        if impl in ("sdpa", "flex_attention"):
            return allowed
        if impl == "eager":
            dtype = self.embed.old.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        raise GenrecError(f"attention implementation {impl!r} takes no custom attention mask: train with share_prefixes=false")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, pred_from: torch.Tensor | None = None,
                soft_rows: torch.Tensor | None = None, soft_table: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sum of target-token NLL, number of target tokens, number correct at argmax).

        ``target_mask[b, t]`` marks token t of row b as a target; it is predicted from position
        ``pred_from[b, t]``, t-1 when not given. A 4D ``attention_mask`` with ``position_ids`` is
        a batch of shared prompts (see :func:`genrec.llm.train.collate_units`).

        Distillation: a code target whose ``soft_rows[b, t]`` is a row r >= 0 of ``soft_table``
        ([rows, code tokens], a distribution over the code tokens) takes the loss
        ``(1 - w) * NLL + w * cross-entropy(soft_table[r], model)``, w = ``self.distill_weight``.
        """
        kw = {} if position_ids is None else {"position_ids": position_ids}
        h = self.hidden(input_ids, attention_mask, **kw).last_hidden_state
        if pred_from is None:
            tm = target_mask.bool().clone()
            tm[:, 0] = False  # nothing predicts a row's first token
            rows, cols = tm.nonzero(as_tuple=True)
            states = h[rows, cols - 1]
        else:
            rows, cols = target_mask.bool().nonzero(as_tuple=True)
            states = h[rows, pred_from[rows, cols]]
        targets = input_ids[rows, cols]
        n = torch.tensor(targets.numel(), device=states.device)
        soft = soft_rows[rows, cols] if soft_rows is not None and soft_table is not None else None
        if self.softmax == "full":
            logits = (states @ self.head_weight(states.dtype).T).float()
            nll = self._distilled(logits, targets, soft, soft_table, self.n_old)
            return nll, n, (logits.argmax(-1) == targets).sum()
        code = targets >= self.n_old
        old, new = self._heads()
        logits = (states[code] @ new.to(states.dtype).T).float()
        code_targets = targets[code] - self.n_old
        if self.softmax == "trie":
            if self.child is None:
                raise GenrecError("softmax='trie' needs the items' trie: call set_trie first")
            node = self.trie_nodes(input_ids, rows[code], cols[code])
            logits = logits.masked_fill(self.child[node] < 0, float("-inf"))
        nll = self._distilled(logits, code_targets, None if soft is None else soft[code], soft_table, 0)
        correct = (logits.argmax(-1) == code_targets).sum()
        text = ~code
        if text.any():
            logits = (states[text] @ self.head_weight(states.dtype).T).float()
            nll = nll + F.cross_entropy(logits, targets[text], reduction="sum")
            correct = correct + (logits.argmax(-1) == targets[text]).sum()
        elif old.requires_grad and self.out_old is not None:
            nll = nll + 0.0 * old.sum()  # every trainable weight takes part in every forward (DDP needs it)
        return nll, n, correct

    def _distilled(self, logits: torch.Tensor, targets: torch.Tensor, soft: torch.Tensor | None,
                   table: torch.Tensor | None, first_code: int) -> torch.Tensor:
        """Summed loss over some target rows: the NLL, mixed with the soft targets where a row has one
        (``soft`` >= 0; the code tokens are the logits' columns from ``first_code`` on)."""
        nll = F.cross_entropy(logits, targets, reduction="none")
        if soft is None or not bool((soft >= 0).any()):
            return nll.sum()
        has = soft >= 0
        q = table[soft[has]].float()
        logp = torch.log_softmax(logits[has], -1)[:, first_code : first_code + q.shape[1]]
        ce = -(q * logp.masked_fill(q == 0, 0.0)).sum(-1)  # q is 0 wherever the model's probability may be (-inf in log)
        w = self.distill_weight
        return nll[~has].sum() + ((1 - w) * nll[has] + w * ce).sum()

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the code tokens only (vocabulary columns ``n_old`` on), float32: all a model
        with ``softmax="codes"`` or ``"trie"`` can write."""
        return (hidden @ self._heads()[1].to(hidden.dtype).T).float()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of some hidden states (decoding), without concatenating the weights;
        with ``softmax="codes"`` every non-code token gets -inf, as in training."""
        old, new = self._heads()
        codes = hidden @ new.to(hidden.dtype).T
        if self.softmax in ("codes", "trie"):
            rest = torch.full((*hidden.shape[:-1], self.n_old), float("-inf"), dtype=codes.dtype, device=codes.device)
        else:
            rest = hidden @ old.to(hidden.dtype).T
        return torch.cat([rest, codes], -1).float()

    def merge_for_inference(self) -> CodeLM:
        """Fold the LoRA adapters into the base weights in place: the same outputs, without the
        adapters' extra matmuls. For decoding; do not train after it."""
        if hasattr(self.model, "merge_adapter"):
            self.model.merge_adapter()
        return self.eval()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable(self, state: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> None:
        own = {n: p for n, p in self.named_parameters() if p.requires_grad}
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise GenrecError(f"{source}: trained weights do not fit this model (missing {missing[:3]}, unexpected {extra[:3]})")
        with torch.no_grad():
            for n, p in own.items():
                if state[n].shape != p.shape:
                    raise GenrecError(f"{source}: {n} has shape {tuple(state[n].shape)}, the model expects {tuple(p.shape)}")
                p.copy_(state[n])


def merged_hf_model(lm: CodeLM):
    """A plain Hugging Face causal LM with the trained weights of ``lm`` folded in: LoRA merged,
    the code-token rows written into a resized embedding and output layer. Consumes ``lm``."""
    model = lm.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with torch.no_grad():
        emb = torch.cat([lm.embed.old.data, lm.embed.new.data.to(lm.embed.old.dtype)])
        decoder = model.get_decoder()
        decoder.embed_tokens = nn.Embedding.from_pretrained(emb, freeze=False)
        head = nn.Linear(emb.shape[1], emb.shape[0], bias=False, device=emb.device, dtype=emb.dtype)
        if lm.out_old is None and lm.out_new is None:
            head.weight = decoder.embed_tokens.weight
        else:
            old, new = lm._heads()
            head.weight.copy_(torch.cat([old.data, new.data.to(old.dtype)]))
            model.config.tie_word_embeddings = False
        model.lm_head = head
    model.config.vocab_size = emb.shape[0]
    return model.eval()
