"""Fine-tuning settings: the ``train`` section of a run config (no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DistillConfig(BaseModel):
    """Distillation from a classic recommender (the ``train.distill`` section): each code target of
    the sequential task also learns the teacher's next-item distribution, marginalised onto that
    code step (the probability of the items under each valid child of the item's codes so far)."""

    model_config = ConfigDict(extra="forbid")

    teacher: str = Field("sasrec-ce", description="a baseline (genrec.registry), fitted on the run's training split by "
                                                  "the baseline stage; its settings: the run's baseline_params")
    weight: float = Field(0.5, gt=0, le=1, description="the loss is (1 - weight) x the target's NLL + weight x the "
                                                       "cross-entropy against the teacher's distribution")
    temperature: float = Field(1.0, gt=0, description="the teacher's scores are divided by it before the softmax")


class LLMTrainConfig(BaseModel):
    """Fine-tuning settings (the ``train`` section of a run config)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["lora", "full"] = "lora"
    backbone: str | None = Field(None, description="fine-tune this model instead of the corpus's backbone; it must share its "
                                                   "tokenizer (e.g. random:128x2, a small Llama from scratch, for budgeted ablations)")
    softmax: Literal["full", "codes", "trie"] = Field(
        "full", description="codes: a code target's softmax runs over the code tokens only (the only tokens constrained decoding "
                            "can choose), skipping the output layer over the whole vocabulary; trie: over the codes the trie "
                            "of valid items allows after the item's codes before it, in training and decoding alike; text "
                            "targets keep the full softmax")
    layers: int | None = Field(None, ge=1, description="keep only the backbone's first N decoder layers (cheaper; the "
                                                      "pretrained weights of those layers are kept)")
    code_init: Literal["random", "scaled", "text"] = Field(
        "random", description="new code-token rows: 'random', the backbone's small initialiser (the reference paper); "
                              "'scaled': drawn per dimension with the mean and spread of the text rows, so codes start "
                              "at the scale of the words around them; 'text': from the items' text (the text stage's "
                              "mean input embeddings): a first-level code starts at the mean of its items' vectors, a "
                              "deeper one at the mean of their residuals after the codes before it, each level "
                              "standardised to the text rows' mean and spread ('scaled' for codes no item has, and "
                              "for every code when no item has text)")
    untie_codes: bool = Field(False, description="code tokens get output rows of their own where the backbone ties input "
                                                 "and output embeddings (text rows stay tied)")
    code_lr: float | None = Field(None, gt=0, description="learning rate of the code-token rows (default: lr)")
    train_text_rows: bool = Field(True, description="full mode: the backbone's own vocabulary rows train too (false: "
                                                    "frozen, as in LoRA mode; no gradient or optimizer state for them)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on every attention and MLP block's output in training "
                                                           "(regularises a full fine-tune on small data)")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    dtype: Literal["auto", "fp32", "bf16"] = Field("auto", description="frozen weights and compute; trainable weights stay fp32")
    device: str = Field("auto", description="auto, cpu or cuda (under accelerate launch: the rank's device)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (a budget)")
    batch_tokens: int = Field(4096, ge=16, description="padded tokens per micro-batch (length grouping)")
    batch_size: int = Field(32, ge=1, description="samples per micro-batch at most")
    grouping: Literal["length", "random"] = "length"
    share_prefixes: bool = Field(True, description="samples with the same prompt (a user's negative-behaviour samples) are "
                                                   "batched as one prompt with a branch per target: the same losses, the "
                                                   "prompt computed once")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: far less memory, ~1/3 more compute")
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    save_every: int = Field(200, ge=1, description="checkpoint every N optimizer steps")
    eval_every: int | None = Field(None, ge=1, description="validation loss every N steps (and at each epoch end)")
    val_loss: bool = Field(True, description="false: no validation loss at all (a forward pass over the validation "
                                             "corpus each time; model selection by ranking, select_users, needs none)")
    select_users: int = Field(0, ge=0, description="model selection by ranking: at each epoch end (or every select_every "
                                                   "steps) decode this seeded sample of validation users with constrained "
                                                   "beam search and keep the weights with the best select_metric; 0: off, "
                                                   "the last weights are kept")
    select_every: int | None = Field(None, ge=1, description="rank the validation sample every N steps too")
    select_metric: str = Field("NDCG@10", pattern=r"^(HR|NDCG)@\d+$|^MRR$")
    select_beams: int = Field(20, ge=1)
    patience: int | None = Field(None, ge=1, description="stop after this many selections without a better metric")
    distill: DistillConfig | None = Field(None, description="learn from a classic recommender's soft targets too "
                                                             "(sequential-task code targets only)")
    log_every: int = Field(10, ge=1)
    seed: int = 0
