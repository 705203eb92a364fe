"""Real tokenizers built locally from the ``mistral-common`` package data (no hub access).

* :func:`mistral_sentencepiece` — Mistral-7B v1, SentencePiece 32k with byte fallback.
* :func:`tekken` — Tekken (``tekken_240911.json``), byte-level BPE, 131k.

Both return Hugging Face fast tokenizers. Conversion of Tekken takes a while, so the converted
``tokenizer.json`` is cached under ``$DOTVLLM_CACHE_DIR`` (default ``~/.cache/dotvllm``) keyed by
the mistral-common version. Needs ``transformers``, ``sentencepiece``, ``protobuf`` and
``mistral-common``; the core engine never imports this module.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["cache_dir", "mistral_sentencepiece", "save_mistral_sentencepiece", "tekken"]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
)


def cache_dir() -> Path:
    root = Path(os.environ.get("DOTVLLM_CACHE_DIR", Path.home() / ".cache" / "dotvllm"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _data_file(name: str) -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / name


def _mistral_common_version() -> str:
    import mistral_common

    return getattr(mistral_common, "__version__", "unknown")


@functools.lru_cache(maxsize=None)
def mistral_sentencepiece():
    """Mistral-7B v1 SentencePiece tokenizer (32000 tokens, byte fallback) as a fast tokenizer."""
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import convert_slow_tokenizer

    # LlamaTokenizerFast(from_slow=True) drops the leading "▁" on transformers 4.53; converting the
    # slow tokenizer explicitly keeps SentencePiece's behaviour.
    slow = LlamaTokenizer(vocab_file=str(_data_file("tokenizer.model.v1")), legacy=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=convert_slow_tokenizer(slow),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_mistral_sentencepiece(directory: str | os.PathLike) -> None:
    """Write the Mistral 32k tokenizer (fast ``tokenizer.json`` + config) into ``directory``."""
    mistral_sentencepiece().save_pretrained(str(directory))


@functools.lru_cache(maxsize=None)
def tekken():
    """Tekken byte-level BPE tokenizer (131072 tokens incl. 1000 special) as a fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    cached = cache_dir() / f"tekken_240911-mc{_mistral_common_version()}"
    if not (cached / "tokenizer.json").exists():
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        _convert_tekken(_data_file("tekken_240911.json")).save_pretrained(str(tmp))
        try:
            os.replace(tmp, cached)
        except OSError:  # another process won the race; its copy is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    tok = PreTrainedTokenizerFast.from_pretrained(str(cached))
    if tok.eos_token is None:
        tok.eos_token = "</s>"
    if tok.bos_token is None:
        tok.bos_token = "<s>"
    return tok


def _convert_tekken(path: Path):
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.mistral import MistralConverter

    tek = Tekkenizer.from_file(str(path))
    specials = [str(getattr(t["token_str"], "value", t["token_str"])) for t in tek._all_special_tokens]
    vocab: dict = {tok: i for i, tok in enumerate(specials)}
    # Ordinary tokens follow the special ones: id = num_special + rank.
    for token_bytes, rank in tek._tekken_token2id_nospecial.items():
        vocab[token_bytes] = rank + len(specials)
    converter = MistralConverter(vocab=vocab, pattern=tek._model._pat_str, additional_special_tokens=specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=specials[3:],
    )
