"""Turn alignment-task samples into token ids and loss labels for one backbone and one index.

Template text is tokenized as text; data text (titles, reviews) with ``split_special_tokens``
so that control and code tokens inside it stay plain text; items are their identifier's ids
(code tokens looked up directly, or a text identifier plus the end token). A sample whose only
loss part is its last one is a chat exchange: the user turn holds the prompt, the assistant
turn the target and the end-of-turn token. A sample with several loss parts (the
``all_positions`` layout) is one user turn with the loss on every target item.
"""

from __future__ import annotations

from dataclasses import dataclass

from genrec.errors import GenrecError
from genrec.index.base import ItemIndex
from genrec.llm.backbone import text_ids
from genrec.llm.tasks import QUERY_CLOSE, QUERY_OPEN, SEQ_TEMPLATES, Sample, query_parts

IGNORE = -100
SYSTEM_PROMPT = "You are a recommender system. Items are written as codes."


def item_token_ids(index: ItemIndex, tokenizer) -> list[list[int]]:
    """Token ids of every item's identifier: its code tokens, or its text plus the end token.

    An item added after training to an id-level index (:meth:`ItemIndex.extended`) has an item token
    the vocabulary lacks: it gets the id ``len(tokenizer) + k`` for the k-th such token, past every
    row of the model, which no model step reads or writes (the decoder backs its score off to its
    trained siblings')."""
    if index.codes is not None and index.method != "iid":
        from genrec.index.base import code_token

        vocab = {t: i for t, i in zip(index.new_tokens, tokenizer.convert_tokens_to_ids(index.new_tokens), strict=True)}
        last, trained = index.levels - 1, index.sizes[-1] if index.sizes else 0

        def token(lv: int, c: int) -> int:
            if index.id_level and lv == last and c >= trained:
                return len(tokenizer) + c - trained
            tid = vocab.get(code_token(lv, c))
            if tid is None:
                raise GenrecError(f"code {code_token(lv, c)} is not among the {index.method} index's tokens")
            return tid

        return [[token(lv, int(c)) for lv, c in enumerate(row)] for row in index.codes]
    if index.end_token is None:  # one token per item
        ids = tokenizer.convert_tokens_to_ids(index.item_strings)
        return [[i] for i in ids]
    end = tokenizer.convert_tokens_to_ids(index.end_token)
    return [text_ids(tokenizer, s) + [end] for s in index.item_strings]


def chat_turn(tokenizer, system: str) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the user's text in the backbone's chat template, with ``system`` as
    the system prompt and the assistant's turn opened; ([], []) for a tokenizer without a template.
    The template's own text is tokenized as template (its special tokens are meant)."""
    if not getattr(tokenizer, "chat_template", None):
        return [], []
    marker = "\x00"
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": marker}],
        tokenize=False,
        add_generation_prompt=True,
    )
    pre, post = rendered.split(marker)
    return tokenizer(pre, add_special_tokens=False)["input_ids"], tokenizer(post, add_special_tokens=False)["input_ids"]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


SEQ_TASKS = ("seq", "seq_all", "seq-valid")  # the sequential task's samples: what the ``codes`` form strips


class PromptFormat:
    """Encodes samples for training and builds inference prompts, for one tokenizer and index.

    ``prompt``: ``chat`` wraps every sample in the backbone's chat template with a system prompt;
    ``plain`` keeps the task's own text only; ``codes`` is ``plain`` with the sequential task
    written as its items' codes back to back after one start token (no instruction, no
    separators: an item is a fixed number of code tokens), about half the tokens of ``plain``."""

    def __init__(self, tokenizer, index: ItemIndex, prompt: str = "chat", system: str = SYSTEM_PROMPT):
        if prompt not in ("chat", "plain", "codes"):
            raise ValueError(f"prompt form {prompt!r}: expected chat, plain or codes")
        self.tok = tokenizer
        self.items = item_token_ids(index, tokenizer)
        self.eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
        self.codes_only = prompt == "codes"
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos
        self.start = [start] if self.codes_only and start is not None else []
        self.user_prefix, self.user_suffix = chat_turn(tokenizer, system) if prompt == "chat" else ([], [])
        self._text_cache: dict[str, list[int]] = {}

    def _template(self, text: str) -> list[int]:
        if text not in self._text_cache:
            self._text_cache[text] = text_ids(self.tok, text)
        return self._text_cache[text]

    def _part(self, kind: str, value: object) -> list[int]:
        if kind == "i":
            return self.items[int(value)]
        if kind == "t":
            return self._template(str(value))
        return text_ids(self.tok, str(value))

    def encode(self, sample: Sample) -> Encoded:
        if sample.task == "seq_query":
            return self._encode_query(sample)
        if self.codes_only and sample.task in SEQ_TASKS:
            ids = list(self.start)
            labels = [IGNORE] * len(ids)
            for kind, value, loss in sample.parts:
                if kind == "i":
                    part = self.items[int(value)]
                    ids += part
                    labels += part if loss else [IGNORE] * len(part)
            if sample.task == "seq" and self.eos is not None:  # per_prefix: the target ends the sample
                ids.append(self.eos)
                labels.append(self.eos)
            return Encoded(ids, labels)
        ids: list[int] = list(self.user_prefix)
        labels: list[int] = [IGNORE] * len(ids)
        loss_at = [n for n, p in enumerate(sample.parts) if p[2]]
        chat_target = not sample.in_turn and len(loss_at) == 1 and loss_at[0] == len(sample.parts) - 1
        for n, (kind, value, loss) in enumerate(sample.parts):
            if chat_target and n == loss_at[0]:
                ids += self.user_suffix
                labels += [IGNORE] * len(self.user_suffix)
            part = self._part(kind, value)
            ids += part
            labels += part if loss else [IGNORE] * len(part)
        if chat_target and self.eos is not None:
            ids.append(self.eos)
            labels.append(self.eos)
        elif not chat_target:
            ids += self.user_suffix
            labels += [IGNORE] * len(self.user_suffix)
        return Encoded(ids, labels)

    def seq_prompt(self, history: list[int], template: int = 0, max_history: int = 20, layout: str = "per_prefix") -> list[int]:
        """The inference prompt of the sequential task: everything before the target's tokens, in
        the form the model was trained on. ``per_prefix``: the history in the user turn, the
        target in the assistant turn. ``all_positions``: the history list left open in the user
        turn, ending with the separator, exactly the tokens that precede an item in training."""
        if self.codes_only:
            return list(self.start) + [t for i in history[-max_history:] for t in self.items[int(i)]]
        head, tail = SEQ_TEMPLATES[template]
        ids = list(self.user_prefix) + self._template(head)
        for n, i in enumerate(history[-max_history:]):
            if n:
                ids += self._template(", ")
            ids += self.items[int(i)]
        if layout == "all_positions":
            return ids + self._template(", ") if len(history) else ids
        return ids + self._template(". " + tail) + self.user_suffix

    def query_prompt(self, history: list[int], query: str, max_history: int = 20) -> list[int]:
        """The inference prompt of the ``seq_query`` task (what precedes the target's tokens in
        training): the last ``max_history`` history items (none: a cold user) and the request, which
        is data (tokenized with ``split_special_tokens``: never a control or code token). ``codes``:
        the start token, the history's codes back to back, then ``QUERY_OPEN`` request ``QUERY_CLOSE``
        as text; ``plain`` / ``chat``: the sample's text (:func:`genrec.llm.tasks.query_parts`) in the
        user turn. ``query`` is taken as given (see :func:`genrec.llm.tasks.clean_query`)."""
        hist = [int(i) for i in history][-max_history:] if max_history else []
        if self.codes_only:
            return (list(self.start) + [t for i in hist for t in self.items[i]] + self._template(QUERY_OPEN)
                    + text_ids(self.tok, query) + self._template(QUERY_CLOSE))
        ids = list(self.user_prefix)
        for kind, value, _ in query_parts(hist, query, 0)[:-1]:
            ids += self._part(kind, value)
        return ids + self.user_suffix

    def _encode_query(self, sample: Sample) -> Encoded:
        """A ``seq_query`` sample: :meth:`query_prompt`, then the target's tokens (and the end token
        in the text forms, as every chat target)."""
        history = [int(v) for k, v, loss in sample.parts if k == "i" and not loss]
        query = next(str(v) for k, v, _ in sample.parts if k == "d")
        (target,) = sample.targets()
        ids = self.query_prompt(history, query, len(history))
        labels = [IGNORE] * len(ids) + list(self.items[target])
        ids += self.items[target]
        if not self.codes_only and self.eos is not None:
            ids.append(self.eos)
            labels.append(self.eos)
        return Encoded(ids, labels)
