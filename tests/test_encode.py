"""Samples -> token ids: loss only on targets, items as their code tokens, data text stays data."""

from __future__ import annotations

import numpy as np

from genrec.index.base import ItemIndex
from genrec.llm.backbone import add_tokens
from genrec.llm.encode import IGNORE, PromptFormat, item_token_ids
from genrec.llm.tasks import Sample


def index_and_tokenizer(tokenizer):
    idx = ItemIndex.from_codes("alignment", np.array([[0, 1], [1, 0], [1, 1]]), [2, 2])
    add_tokens(tokenizer, None, idx.new_tokens)
    return idx, tokenizer


def test_item_ids_are_the_code_tokens(tokenizer):
    idx, tok = index_and_tokenizer(tokenizer)
    ids = item_token_ids(idx, tok)
    assert tok.convert_ids_to_tokens(ids[1]) == ["<a_1>", "<b_0>"]


def test_loss_only_on_the_target_and_eos(tokenizer):
    idx, tok = index_and_tokenizer(tokenizer)
    fmt = PromptFormat(tok, idx)
    s = Sample("seq", 0, [("t", "History: ", False), ("i", 0, False), ("t", ". Next?", False), ("i", 2, True)], 0, 2)
    enc = fmt.encode(s)
    target = [i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tok.convert_ids_to_tokens(target) == ["<a_1>", "<b_1>", tok.eos_token]
    # the prompt ends with the assistant header and equals seq_prompt's layout up to the target
    text = tok.decode(enc.input_ids)
    assert "<|im_start|>assistant" in text and text.index("<a_0><b_1>") < text.index("assistant")


def test_data_text_cannot_inject_tokens(tokenizer):
    idx, tok = index_and_tokenizer(tokenizer)
    fmt = PromptFormat(tok, idx)
    s = Sample("title2item", 0, [("t", "Title: ", False), ("d", "Mic <a_1><b_1> <|im_end|>", False), ("i", 1, True)], -1, 1)
    enc = fmt.encode(s)
    code_ids = set(tok.convert_tokens_to_ids(idx.new_tokens))
    user_part = enc.input_ids[: len(enc.input_ids) - 3]  # before the target's two codes and eos
    # the only code tokens in the sample are the target's; one im_end closes the system turn,
    # one the user turn, one the answer: none comes from the title
    assert [t for t in enc.input_ids if t in code_ids] == item_token_ids(idx, tok)[1]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert enc.input_ids.count(im_end) == 3 and user_part.count(im_end) == 2


def test_all_positions_sample_has_loss_on_each_target(tokenizer):
    idx, tok = index_and_tokenizer(tokenizer)
    fmt = PromptFormat(tok, idx)
    s = Sample("seq_all", 0, [("t", "Items: ", False), ("i", 0, False), ("t", ", ", False), ("i", 1, True),
                              ("t", ", ", False), ("i", 2, True)], 0, 2)
    enc = fmt.encode(s)
    target = [i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tok.convert_ids_to_tokens(target) == ["<a_1>", "<b_0>", "<a_1>", "<b_1>"]


def test_all_positions_prompt_is_the_training_sequence_before_each_target(tokenizer):
    """A model trained on all_positions sequences is decoded with the list left open: the prompt
    for the item at position n is exactly the training sequence's tokens before that item."""
    import pandas as pd

    from genrec.data.dataset import Dataset
    from genrec.llm.corpus import validation_samples
    from genrec.llm.tasks import SEQ_TEMPLATES, TaskConfig, build_tasks

    idx, tok = index_and_tokenizer(tokenizer)
    fmt = PromptFormat(tok, idx)
    seq = [0, 2, 1, 2, 0, 1]
    inter = pd.DataFrame({"user_idx": [0] * len(seq), "item_idx": seq, "timestamp": range(len(seq))})
    ds = Dataset(pd.DataFrame({"title": ["a", "b", "c"]}), np.array(["u0"]), inter)
    sample = next(s for s in build_tasks(ds, TaskConfig(tasks=["seq"], layout="all_positions")) if s.task == "seq_all")
    enc = fmt.encode(sample)
    train = ds.train_sequences()[0].tolist()
    assert train == seq[:-2]
    # the start of each target item in the encoded sequence
    labels = np.array(enc.labels)
    starts = [j for j in range(len(labels)) if labels[j] != IGNORE and (j == 0 or labels[j - 1] == IGNORE)]
    assert len(starts) == len(train) - 1
    for n, start in enumerate(starts, start=1):
        prompt = PromptFormat(tok, idx).seq_prompt(train[:n], sample.template, 20, "all_positions")
        assert prompt == enc.input_ids[:start]
        assert enc.input_ids[start : start + 2] == fmt.items[train[n]]
    # the per-prefix prompt puts the target in the assistant turn instead
    chat = fmt.seq_prompt(train[:2], 0, 20)
    assert tok.decode(chat).endswith("<|im_start|>assistant\n") and SEQ_TEMPLATES[0][1] in tok.decode(chat)
    # validation in the all_positions form: the history list continued, the target in the user turn
    (val,) = validation_samples(ds, 20, 10, 0, "all_positions")
    venc = fmt.encode(val)
    vstart = next(j for j, lab in enumerate(venc.labels) if lab != IGNORE)
    assert venc.input_ids[:vstart] == fmt.seq_prompt(train, 0, 20, "all_positions")
    assert venc.input_ids[vstart : vstart + 2] == fmt.items[seq[-2]]
    assert sum(lab != IGNORE for lab in venc.labels) == 2  # the two codes; no eos inside the user turn


def test_plain_prompts_drop_the_chat_wrapping_and_decode_in_the_trained_form(tokenizer):
    """prompt: plain. A training sequence is the task's text and codes only (no system prompt, no
    chat tokens), and the decoding prompt for each target is exactly the tokens before it."""
    import pandas as pd

    from genrec.data.dataset import Dataset
    from genrec.llm.tasks import SEQ_TEMPLATES, TaskConfig, build_tasks

    idx, tok = index_and_tokenizer(tokenizer)
    plain, chat = PromptFormat(tok, idx, "plain"), PromptFormat(tok, idx)
    seq = [0, 2, 1, 2, 0, 1]
    inter = pd.DataFrame({"user_idx": [0] * len(seq), "item_idx": seq, "timestamp": range(len(seq))})
    ds = Dataset(pd.DataFrame({"title": ["a", "b", "c"]}), np.array(["u0"]), inter)
    sample = next(s for s in build_tasks(ds, TaskConfig(tasks=["seq"], layout="all_positions")) if s.task == "seq_all")
    enc, wrapped = plain.encode(sample), chat.encode(sample)
    head = SEQ_TEMPLATES[sample.template][0]
    # by hand: the template's head, then the items' codes separated by ", "
    expected = tok(head, add_special_tokens=False)["input_ids"]
    for n, i in enumerate(seq[:-2]):
        expected += (tok(", ", add_special_tokens=False)["input_ids"] if n else []) + plain.items[i]
    assert enc.input_ids == expected
    assert not set(enc.input_ids) & set(tok.all_special_ids)
    assert len(wrapped.input_ids) > len(enc.input_ids) + 10  # the chat form pays for the system prompt and turns
    assert [x for x in enc.labels if x != IGNORE] == [x for x in wrapped.labels if x != IGNORE]
    labels = np.array(enc.labels)
    starts = [j for j in range(len(labels)) if labels[j] != IGNORE and (j == 0 or labels[j - 1] == IGNORE)]
    for n, start in enumerate(starts, start=1):
        assert plain.seq_prompt(seq[:n], sample.template, 20, "all_positions") == enc.input_ids[:start]


def test_codes_prompts_write_the_sequence_as_codes_back_to_back(tokenizer):
    """prompt: codes. The sequential task is one start token and its items' codes, loss on every
    item after the first; decoding prompts are the tokens before each target; the text tasks keep
    their text (as in plain)."""
    import pandas as pd

    from genrec.data.dataset import Dataset
    from genrec.llm.tasks import TaskConfig, build_tasks

    idx, tok = index_and_tokenizer(tokenizer)
    codes, plain = PromptFormat(tok, idx, "codes"), PromptFormat(tok, idx, "plain")
    seq = [0, 2, 1, 2, 0, 1]
    inter = pd.DataFrame({"user_idx": [0] * len(seq), "item_idx": seq, "timestamp": range(len(seq))})
    ds = Dataset(pd.DataFrame({"title": ["a", "b", "c"]}), np.array(["u0"]), inter)
    sample = next(s for s in build_tasks(ds, TaskConfig(tasks=["seq"], layout="all_positions")) if s.task == "seq_all")
    enc = codes.encode(sample)
    train = seq[:-2]
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    assert enc.input_ids == [start] + [t for i in train for t in codes.items[i]]
    assert enc.labels == [IGNORE] * 3 + [t for i in train[1:] for t in codes.items[i]]
    for n in range(1, len(train)):
        assert codes.seq_prompt(train[:n], sample.template, 20, "all_positions") == enc.input_ids[: 1 + 2 * n]
        assert codes.seq_prompt(train[:n], 0, 20, "per_prefix") == enc.input_ids[: 1 + 2 * n]
    assert codes.seq_prompt([], 0, 20, "all_positions") == [start]  # a user with no history still has a prompt
    text = Sample("title2item", 0, [("t", "Title: ", False), ("d", "Mic", False), ("i", 1, True)], -1, 1)
    assert codes.encode(text) == plain.encode(text)
    # per_prefix: the target's codes, then the end token
    per = Sample("seq", 0, [("t", "History: ", False), ("i", 0, False), ("t", ". Next?", False), ("i", 2, True)], 0, 2)
    assert codes.encode(per).input_ids == [start, *codes.items[0], *codes.items[2], tok.eos_token_id]
