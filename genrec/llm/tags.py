"""LLM feature engineering (references/001): the instruct backbone writes short keyword tags for the
items whose description is missing or short, and the tags join the item text the later stages read.

- **Which items.** Those whose description (stripped) is shorter than ``min_description``
  characters and that have some title or description to go on; every other item is left alone.
- **The prompt.** The backbone's chat template with a system prompt, one worked example (a
  product and its tags, template text) and the request, whose product part is the item's title
  and description as *data*: tokenized with ``split_special_tokens`` and cut to
  ``max_input_tokens``, so a title holding ``<|im_end|>`` or ``<a_1>`` is plain text, never a
  control or code token. Without a chat template, the same in plain text.
- **Generation.** Greedy, ``max_new_tokens`` at most, several prompts per ``generate`` call (left
  padded, similar lengths together), stopped at the end-of-turn token; decoded without special
  tokens. A generation the token limit cut off loses its last comma-separated piece, a tag
  likely cut mid-word.
- **Cleaning** (:func:`clean_tags`). Anything written like a token (``<...>`` without spaces) is
  cut out and ``<``, ``>``, ``|`` removed, so the tags can never carry control or code tokens, even
  as text; then lower case, split on commas, semicolons and line ends, list markers and edge
  punctuation dropped, each tag cut to ``max_words`` words within ``max_chars`` characters, tags
  without a letter dropped, duplicates dropped, at most ``max_tags``.
- **The cache.** Raw generations (before cleaning) in one JSON file per generator (backbone, prompt
  version, generation settings: :func:`tags_key`) under ``$GENREC_CACHE/tags``, keyed by the
  SHA-256 of the item's data text and written after every batch (:func:`genrec.llm.textcache.fill`):
  a cached generation is never redone, and a killed run redoes only the batch it was in.
- **How tags enter the item text** (:func:`with_tags`): a tagged item's description becomes
  ``"<description> Tags: <tags>"``; the run's ``tags`` stage writes the prepared dataset so
  augmented, which the text stage, the index, the alignment tasks and the text-reading baselines
  (``sasrec-llm``) read in place of the plain one.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pandas as pd

from genrec.artifacts import write_json_atomic
from genrec.errors import DataError
from genrec.llm.config import TagsConfig
from genrec.llm.textcache import cache_root, fill, text_hash

#: what the cached generations are a function of besides the settings: change it with the prompt
PROMPT_VERSION = 2
#: what a tags artifact is a function of besides the generations: change it with the cleaning
CLEAN_VERSION = 1
SYSTEM = "You write short keyword tags for products in an online shop."
ASK = "Write up to {n} short keyword tags for this product, lower case, separated by commas.\nProduct:"
EXAMPLE = ("Stanley 1/2-Inch Stainless Steel Narrow Crown Staples, 1000 Count.",
           "staples, stainless steel, narrow crown, staple gun, fasteners, hardware")
PLAIN_ANSWER = "\nTags:"  # the plain prompt's end; the chat form opens the assistant's turn instead
TAGS_FILE = "tags.json"

_TOKENISH = re.compile(r"<[^<>\s]{1,40}>")  # <|im_end|>, <a_1>, </s>: anything written like a token
_MARKS = re.compile(r"[<>|]")
_LABEL = re.compile(r"^\s*(tags|keywords)\s*:", re.IGNORECASE)
_LIST_MARK = re.compile(r"^\s*(\d+[.)]|[-*•#])\s+")
_EDGES = " .,:;-_'\"`/\\!?()[]{}*#"


def clean_tags(text: str, max_tags: int = 8, max_words: int = 4, max_chars: int = 32) -> str:
    """Generated text -> ``"tag, tag, ..."``, free of anything token-like (see the module's notes)."""
    text = "".join(c if c.isprintable() else "," if c in "\r\n" else " " for c in str(text))
    text = _MARKS.sub(" ", _TOKENISH.sub(",", text)).lower()
    text = _LABEL.sub("", text)
    out: list[str] = []
    for piece in re.split(r"[,;]", text):
        kept: list[str] = []
        for word in _LIST_MARK.sub("", piece).split():
            if len(kept) == max_words or len(" ".join([*kept, word])) > max_chars:
                break
            kept.append(word)
        tag = " ".join(kept).strip(_EDGES)
        if any(c.isalpha() for c in tag) and tag not in out:
            out.append(tag)
        if len(out) == max_tags:
            break
    return ", ".join(out)


def item_data(title: str, description: str) -> str:
    """The text of an item the prompt carries as data (and the cache is keyed by)."""
    return " ".join(x for x in (str(title).strip(), str(description).strip()) if x)


def _column(items: pd.DataFrame, name: str) -> pd.Series:
    return items[name].fillna("").astype(str) if name in items.columns else pd.Series([""] * len(items), index=items.index)


def needs_tags(items: pd.DataFrame, min_description: int) -> list[bool]:
    """Per item: its description is shorter than ``min_description`` characters and it has some text."""
    titles, descs = _column(items, "title"), _column(items, "description")
    return [len(d.strip()) < min_description and bool(item_data(t, d)) for t, d in zip(titles, descs, strict=True)]


def with_tags(items: pd.DataFrame, tags: list[str]) -> pd.DataFrame:
    """A copy of ``items`` whose tagged rows (``tags[i]`` not empty) have ``"<description> Tags: <tags>"``
    as description; the other rows are unchanged."""
    if len(tags) != len(items):
        raise ValueError(f"{len(tags)} tag strings for {len(items)} items")
    out = items.copy()
    descs = _column(items, "description")
    out["description"] = [f"{d.strip()} Tags: {t}".strip() if t else d for d, t in zip(descs, tags, strict=True)]
    return out


class TagPrompt:
    """Token ids of the tag prompt for one tokenizer: template text as text, the item as data."""

    def __init__(self, tokenizer, max_tags: int = 8, max_input_tokens: int = 64):
        from genrec.llm.backbone import text_ids

        self.tok, self.max_input_tokens = tokenizer, max_input_tokens
        ask = ASK.format(n=max_tags)
        if getattr(tokenizer, "chat_template", None):
            marker = "\x00"
            rendered = tokenizer.apply_chat_template(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{ask} {EXAMPLE[0]}"},
                 {"role": "assistant", "content": EXAMPLE[1]}, {"role": "user", "content": marker}],
                tokenize=False, add_generation_prompt=True)
            pre, post = rendered.split(marker)  # the template's own text: its special tokens are meant
            self.prefix = tokenizer(pre, add_special_tokens=False)["input_ids"] + text_ids(tokenizer, ask)
            self.suffix = tokenizer(post, add_special_tokens=False)["input_ids"]
            self.stop = [i for i in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
                         if isinstance(i, int) and i != tokenizer.unk_token_id]
        else:
            self.prefix = text_ids(tokenizer, f"{SYSTEM}\n{ask} {EXAMPLE[0]}{PLAIN_ANSWER} {EXAMPLE[1]}\n\n{ask}")
            self.suffix = text_ids(tokenizer, PLAIN_ANSWER)
            self.stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def ids(self, data: str) -> list[int]:
        from genrec.llm.backbone import text_ids

        return self.prefix + text_ids(self.tok, f" {data}", self.max_input_tokens) + self.suffix  # after "Product:"


class TagGenerator:
    """Raw tag text for item data texts, greedy and batched (callable: list of texts -> list of
    generations). ``calls`` counts the texts it has generated for."""

    def __init__(self, cfg: TagsConfig, model=None, tokenizer=None):
        if model is None:
            from genrec.llm.backbone import load_backbone

            model, tokenizer = load_backbone(cfg.backbone, device=cfg.device, dtype=cfg.dtype)
        self.model, self.tok, self.cfg = model.eval(), tokenizer, cfg
        self.prompt = TagPrompt(tokenizer, cfg.max_tags, cfg.max_input_tokens)
        self.calls = 0

    def __call__(self, texts: list[str]) -> list[str]:
        self.calls += len(texts)
        prompts = [self.prompt.ids(t) for t in texts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        out = [""] * len(texts)
        for lo in range(0, len(order), self.cfg.batch_size):
            rows = order[lo : lo + self.cfg.batch_size]
            for i, ids in zip(rows, self.greedy([prompts[i] for i in rows]), strict=True):
                text = self.tok.decode(ids, skip_special_tokens=True)
                if len(ids) >= self.cfg.max_new_tokens and "," in text:  # cut off by the limit: drop the last,
                    text = text[: text.rfind(",")]                          # likely unfinished tag
                out[i] = text
        return out

    def greedy(self, prompts: list[list[int]]) -> list[list[int]]:
        """The greedy continuations of ``prompts`` (one generate call, left padded), each cut before its
        first stop token."""
        import torch

        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.prompt.stop or [0])[0]
        width = max(len(p) for p in prompts)
        x = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            x[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        device = next(self.model.parameters()).device
        with torch.no_grad():
            y = self.model.generate(input_ids=x.to(device), attention_mask=mask.to(device), do_sample=False, num_beams=1,
                                    max_new_tokens=self.cfg.max_new_tokens, pad_token_id=pad,
                                    eos_token_id=self.prompt.stop or None)
        out = []
        for row in y[:, width:].tolist():
            ends = [n for n, t in enumerate(row) if t in self.prompt.stop]
            out.append(row[: ends[0]] if ends else row)
        return out


def tags_key(cfg: TagsConfig) -> str:
    """The cache file's name: what a generation is a function of, besides the item's text."""
    spec = {"backbone": cfg.backbone, "prompt": PROMPT_VERSION, "max_tags": cfg.max_tags, "dtype": cfg.dtype,
            "max_new_tokens": cfg.max_new_tokens, "max_input_tokens": cfg.max_input_tokens, "decoding": "greedy"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_file(cfg: TagsConfig, cache_dir: str | Path | None = None) -> Path:
    """This generator's cache file under ``cache_dir`` (else ``cfg.cache``, else ``$GENREC_CACHE/tags``)."""
    folder = cache_dir if cache_dir is not None else cfg.cache
    return (Path(folder) if folder is not None else cache_root() / "tags") / f"{tags_key(cfg)}.json"


def read_cache(path: Path) -> dict[str, str]:
    """{text hash: raw generation} of a tag cache file ({} when it does not exist)."""
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, None, f"expected a tag cache (JSON: text hash -> generation); delete it to rebuild ({e})") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise DataError(path, None, "expected a JSON object of text hash -> generated text; delete it to rebuild")
    return table


def item_tags(items: pd.DataFrame, cfg: TagsConfig, generator=None, cache_dir: str | Path | None = None) -> tuple[list[str], dict]:
    """The cleaned tags of every item ("" for the items left alone, and for those whose generation
    cleaned to nothing) through this generator's cache; the backbone is loaded only when some item's
    text is not cached. ``generator``: a callable in place of :class:`TagGenerator` (tests).
    Returns (tags, stats: items, eligible, generated, reused, tagged, seconds, cache_file)."""
    chosen = needs_tags(items, cfg.min_description)
    titles, descs = _column(items, "title").tolist(), _column(items, "description").tolist()
    texts = {i: item_data(titles[i], descs[i]) for i, c in enumerate(chosen) if c}
    path = cache_file(cfg, cache_dir)
    table = read_cache(path)
    state: dict = {}

    def generate(batch: list[str]) -> list[str]:
        nonlocal generator
        if generator is None:  # loaded once, and only when some text is not cached
            t0 = time.perf_counter()
            generator = TagGenerator(cfg)
            state["load_seconds"] = round(time.perf_counter() - t0, 3)
        return generator(batch)

    ordered = sorted(texts.values(), key=len)  # similar lengths share a batch
    _, stats = fill(ordered, generate, table, lambda t: write_json_atomic(path, t), cfg.batch_size)
    tags = [clean_tags(table[text_hash(texts[i])], cfg.max_tags) if i in texts else "" for i in range(len(items))]
    return tags, {"items": len(items), "eligible": len(texts), "generated": stats["computed"], "reused": stats["reused"],
                  "tagged": sum(1 for t in tags if t), "seconds": stats["seconds"], **state, "cache_file": str(path)}


def write_tags_file(path: Path, items: pd.DataFrame, tags: list[str]) -> None:
    """{item_id: tags} of the tagged items, as JSON (written atomically)."""
    ids = _column(items, "item_id").tolist()
    write_json_atomic(Path(path), {ids[i]: t for i, t in enumerate(tags) if t})
