"""The text modality: packed token-id shards to masked language modelling.

Its configs and geometry (read when a run YAML is loaded, no torch); what it does to data is in
``text_ops``. A sample is ``seq_len`` token ids with their word-start flags (the prep's
``tokens.npy.zst``); the token grid is the sequence, with 1-D sin-cos positions, and the
vocabulary is the prep's tokenizer's (``OUT/tokenizer.json``, read when training starts). The
objective is ``mlm``: every token through the encoder, ``mask.ratio`` of them predicted by a head
tied to the embeddings. Downstream: masked-token accuracy and perplexity on the held-out corpus
split, and a linear probe and fine-tuning on the labelled classification set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import ClassVar

from data_prep.store import location
from training.modalities import Modality, TokenGeometry
from training.objectives import objective
from training.tasks.config import FinetuneConfig, ProbeConfig

TOKENIZER_FILE = "tokenizer.json"  # beside the splits (data_prep.text.tokenizer)
MASK_KINDS = ("random", "whole_word", "span")  # training.objectives.mlm.masking.KINDS


@dataclass
class TextInputConfig:
    """``pretrain.input``: the sequence the model reads."""

    seq_len: int = 128  # tokens; stored sequences are cut or padded to it
    vocab_size: int = 0  # 0: the prep's tokenizer's (read from tokenizer.json at training time)

    def problems(self):
        if self.seq_len < 8:
            yield ("seq_len", f"an int >= 8 (tokens), got {self.seq_len}")
        if self.vocab_size < 0:
            yield (
                "vocab_size",
                f"0 (the tokenizer's) or the vocabulary size, got {self.vocab_size}",
            )


@dataclass
class MlmEvalConfig:
    """Masked-token accuracy and perplexity on the held-out corpus split (``val``)."""

    STAGE: ClassVar = "probe"

    enabled: bool = True
    kind: str = "random"  # the mask every encoder is scored under, whatever it trained with
    ratio: float = 0.15
    max_sequences: int = 2000
    batch_size: int = 64

    def problems(self):
        if self.kind not in MASK_KINDS:
            yield ("kind", f"one of {', '.join(MASK_KINDS)}, got {self.kind!r}")
        if not 0.0 < self.ratio < 1.0:
            yield ("ratio", f"a float in (0, 1), got {self.ratio}")
        if self.max_sequences < 1 or self.batch_size < 1:
            yield ("max_sequences", "max_sequences and batch_size: ints >= 1")


@dataclass
class TextTasksConfig:
    """``evaluate.tasks``: each runs on the pretrained and a random-init encoder."""

    mlm: MlmEvalConfig = field(default_factory=MlmEvalConfig)
    linear_probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def geometry(cfg: TextInputConfig) -> TokenGeometry:
    return TokenGeometry((cfg.seq_len,), 1, vocab_size=cfg.vocab_size)


def tokens_per_sample(cfg: TextInputConfig) -> float:
    return float(cfg.seq_len)


def bind_input(cfg: TextInputConfig, train_shards: str) -> TextInputConfig:
    """Fill an unset vocabulary size from the tokenizer the prep saved beside the splits."""
    if cfg.vocab_size:
        return cfg
    path = location(train_shards).parent / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the text prep writes it beside the splits")
    desc = json.loads(path.read_text())
    vocab = len(desc["model"]["vocab"]) + sum(
        1 for t in desc.get("added_tokens", []) if t["content"] not in desc["model"]["vocab"]
    )
    return replace(cfg, vocab_size=vocab)


MODALITY = Modality(
    name="text",
    unit="tokens",
    objective=objective("mlm"),
    members=("tokens.npy.zst", "cls"),
    mask_kinds=MASK_KINDS,
    mask_ratio=0.15,  # BERT's; 0.3-0.4 trains large models better (Wettig et al.)
    input_config=TextInputConfig,
    tasks_config=TextTasksConfig,
    geometry=geometry,
    ops_module="training.modalities.text.ops",
    # Probe and fine-tuning on the labelled set; masked-token accuracy reads the corpus's val.
    eval_splits=("labelled_train", "labelled_val"),
    unit_per_sample=tokens_per_sample,
    bind_input=bind_input,
    encoding_files=(TOKENIZER_FILE,),
    foreign_export_problem="no class in HF or timm holds it: BERT and RoBERTa are post-norm "
    "with learned positions and an embedding LayerNorm; ours is pre-norm with sin-cos "
    "positions and a cls vector that is not a vocabulary id",
)
