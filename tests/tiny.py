"""Tiny random models and a locally trained tokenizer for tests: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "I love this movie, it is great and wonderful",
    "I hate this film, it is terrible and awful",
    "the weather is fine today, nothing special",
    "Sentiment: positive negative neutral",
    "What is the sentiment of this text? Answer negative, positive.",
    "You are a sentiment classifier. Answer with one word",
] * 20


def build_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocab ~300) with a ChatML template, saved to ``path``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", mask_token="<mask>", unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_llama(path: Path, seed: int = 0, hidden: int = 16, layers: int = 2) -> Path:
    """A random Llama causal LM (2 layers of width 16 unless told) plus the tiny tokenizer, saved to
    ``path``; a wider one is slow enough on purpose (a kill lands while it scores)."""
    import torch

    torch.manual_seed(seed)
    tok = build_tokenizer(path)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=layers,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def build_roberta(path: Path, seed: int = 0) -> Path:
    """A 2-layer random RoBERTa (hidden 32) plus the tiny tokenizer, saved to ``path``."""
    import torch

    torch.manual_seed(seed)
    tok = build_tokenizer(path)
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=300,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        num_labels=2,
    )
    RobertaForSequenceClassification(config).save_pretrained(path)
    return path


def build_sentence_encoder(path: Path, seed: int = 0, pooling: str = "mean") -> Path:
    """A 2-layer random BERT (hidden 32) saved as sentence-transformers saves one: the encoder without a
    head, plus ``modules.json`` and ``1_Pooling/config.json`` saying how its token states are pooled."""
    import json

    import torch

    torch.manual_seed(seed)
    tok = build_tokenizer(path)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=300,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(config).save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, **{flag: mode == pooling for mode, flag in flags.items()}})
    )
    return path
