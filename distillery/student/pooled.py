"""A sequence classifier that reads a sentence encoder the way it was trained: its token states pooled
as its sentence-transformers ``1_Pooling`` config says (mean for all-MiniLM-L6-v2), then one linear
layer. ``AutoModelForSequenceClassification`` would read the ``[CLS]`` token through BERT's pooler
instead, which sentence encoders never trained (docs/results.md, "Keep every class", measures both).

The encoder's own config is the model's config (``model_type`` stays ``bert``, ``roberta``, ...), with
``distillery_pooling`` added. This file imports only torch and transformers: distill copies it into every
saved student as ``modeling_pooled.py`` and names it in ``config.json``'s ``auto_map``, so plain transformers
loads the student with ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")  # what sentence-transformers' Pooling can say, read here
CODE_FILE = "modeling_pooled.py"  # this file, in a saved student
CLASS_NAME = "PooledEncoderForSequenceClassification"


def checkpoint_pooling(path: str) -> str | None:
    """The pooling a sentence-transformers checkpoint at ``path`` was trained with (its ``modules.json``
    names a Pooling module whose config says which): one of :data:`POOLING_MODES`, or None for a plain
    checkpoint or a pooling this head does not read (weighted mean, last token)."""
    try:
        with open(_checkpoint_file(path, "modules.json")) as f:
            modules = json.load(f)
        folder = next(m["path"] for m in modules if m.get("type", "").endswith("models.Pooling"))
        with open(_checkpoint_file(path, f"{folder}/config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError, StopIteration, KeyError, TypeError, AttributeError):
        return None
    keys = {mode: f"pooling_mode_{mode}_{'token' if mode == 'cls' else 'tokens'}" for mode in POOLING_MODES}
    on = [mode for mode, key in keys.items() if config.get(key)]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in keys.values()]
    return on[0] if len(on) == 1 and not others else None


def _checkpoint_file(path: str, name: str) -> str:
    """A file of a local checkpoint folder or of a hub repo (from the cache, or fetched); OSError if absent."""
    if os.path.isdir(path):
        return os.path.join(path, name)
    from transformers.utils import cached_file

    found = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
    if found is None:
        raise OSError(f"{path} has no {name}")
    return found


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """``(batch, hidden)`` from the token states ``(batch, tokens, hidden)`` and the attention mask."""
    if mode == "cls":
        return states[:, 0]
    weights = mask.unsqueeze(-1).to(states.dtype)
    if mode == "max":
        return states.masked_fill(weights == 0, torch.finfo(states.dtype).min).amax(dim=1)
    total, count = (states * weights).sum(dim=1), weights.sum(dim=1).clamp(min=1.0)
    return total / (count.sqrt() if mode == "mean_sqrt_len" else count)


def _encoder(load, *args, **kwargs):
    """``load(*args)`` without the encoder's own pooler where its class has the flag (it goes unused)."""
    try:
        return load(*args, add_pooling_layer=False, **kwargs)
    except TypeError:
        return load(*args, **kwargs)


class PooledEncoderForSequenceClassification(PreTrainedModel):
    """An encoder (any ``AutoModel``) whose pooled token states go through dropout and one linear layer."""

    config_class = PretrainedConfig
    base_model_prefix = "encoder"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: PretrainedConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else _encoder(AutoModel.from_config, config)
        dropout = getattr(config, "classifier_dropout", None)
        dropout = dropout if dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @classmethod
    def from_encoder(cls, path: str, config: PretrainedConfig, **kwargs):
        """A fresh head on the encoder of the checkpoint at ``path``, however its weights are named (a
        plain encoder, or one saved with a head: AutoModel reads both)."""
        encoder = _encoder(AutoModel.from_pretrained, path, **kwargs)
        model = cls(config, encoder=encoder)
        return model.to(encoder.dtype)

    @classmethod
    def from_pretrained(cls, path, *args, config: PretrainedConfig | None = None, **kwargs):
        """A saved pooled classifier; its config's class is its encoder's, read with AutoConfig."""
        if config is None:
            config_keys = {"num_labels", "id2label", "label2id", "distillery_pooling"}
            config = AutoConfig.from_pretrained(path, **{k: kwargs.pop(k) for k in config_keys & kwargs.keys()})
        return super().from_pretrained(path, *args, config=config, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra, **kwargs)
        pooled = pool(out.last_hidden_state, attention_mask, getattr(self.config, "distillery_pooling", "mean"))
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
