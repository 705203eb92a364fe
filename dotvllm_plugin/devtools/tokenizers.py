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
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_sentencepiece_bpe(_data_file("tokenizer.model.v1")),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _sentencepiece_bpe(model_file: Path):
    """A ``tokenizers.Tokenizer`` equivalent to a SentencePiece BPE model with byte fallback.

    Built here with the ``tokenizers`` library from the model's protobuf, the way transformers 4.x's
    ``LlamaConverter`` (``LlamaTokenizer(legacy=True)`` through ``convert_slow_tokenizer``) does:
    vocabulary in piece order (ids 0-2 are ``<unk>``, ``<s>``, ``</s>``), merges of every piece
    split into two pieces, ranked by the merged piece's score (highest first, then longer left,
    then longer right piece; ties keep vocabulary order), ``BPE(fuse_unk, byte_fallback)``, control
    and user-defined pieces as added tokens, the legacy normalizer (prepend "▁", spaces to "▁")
    and the matching decoder. Not through transformers: its converter changed in 5.x (it fails on
    this model in 5.19: "'list' object has no attribute '__name__'", and its ``LlamaTokenizerFast``
    conversion drops the leading "▁" in 4.53), so 4.x and 5.x environments build the same
    ``tokenizer.json`` here (checked by ``tests/integration_v1/test_v1_demo_tokenizer.py``).
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type != 2:  # BPE
        raise ValueError(f"{model_file}: not a SentencePiece BPE model")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    merges = []
    for piece, score in pieces:  # same order, ranking and tie-breaking as transformers 4.x
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    tokenizer = Tokenizer(BPE(vocab, [(a, b) for a, b, _ in merges], unk_token=proto.trainer_spec.unk_piece,
                              fuse_unk=True, byte_fallback=True, dropout=None))
    tokenizer.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3)
                          for p in proto.pieces if p.type in (3, 4)])  # CONTROL, USER_DEFINED
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(prepend="\u2581"),
                                                 normalizers.Replace(pattern=" ", content="\u2581")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), decoders.Strip(content=" ", left=1)])
    return tokenizer


# What transformers 4.x's save_pretrained writes beside tokenizer.json for mistral_sentencepiece();
# written as is, so the files (hence the demo model) are the same whichever transformers builds them
# (5.x would write "tokenizer_class": "TokenizersBackend", which transformers 4.x cannot load).
_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
_TOKENIZER_CONFIG = {
    "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": True}
                             for i, t in enumerate(("<unk>", "<s>", "</s>"))},
    **_SPECIAL_TOKENS,
    "clean_up_tokenization_spaces": False,
    "extra_special_tokens": {},
    "model_max_length": int(1e30),
    "tokenizer_class": "PreTrainedTokenizerFast",
}


def save_mistral_sentencepiece(directory: str | os.PathLike) -> None:
    """Write the Mistral 32k tokenizer (fast ``tokenizer.json``, its config and the chat template)
    into ``directory``; the same bytes with transformers 4.x and 5.x (transformers is not used)."""
    import json

    from tokenizers import AddedToken

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = _sentencepiece_bpe(_data_file("tokenizer.model.v1"))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.save(str(directory / "tokenizer.json"), pretty=True)
    for name, content in (("tokenizer_config.json", _TOKENIZER_CONFIG), ("special_tokens_map.json", _SPECIAL_TOKENS)):
        (directory / name).write_text(json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)


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
