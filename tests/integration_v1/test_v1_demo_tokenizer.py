"""The demo model's tokenizer built in the V1 environment (transformers 5.x), where transformers'
own SentencePiece conversion fails: it must tokenize as SentencePiece does, and be the same files
as the V0 environment (transformers 4.x) builds, so either environment can build the demo model.
No server is started."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

import pytest

from dotvllm_plugin.devtools.tokenizers import _data_file, save_mistral_sentencepiece

REPO = Path(__file__).resolve().parents[2]
V0_PYTHON = REPO / ".venv" / "bin" / "python"
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SAMPLES = [
    "Hello world", " leading space", "  two leading spaces", "Call me at (555) 123-4567",
    '{"name": "Ann", "age": 42, "tags": ["a", "b"]}', "naïve café — 東京 🙂 Ω≈ç√", "tabs\tand\nnewlines  double",
    "ÿ\x00\x7f\x1b", "trailing space ", "▁already▁metaspace", "def f(x):\n    return x ** 2\n",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer-here")
    save_mistral_sentencepiece(directory)
    return directory


def test_token_ids_are_sentencepieces(built):
    import sentencepiece
    from transformers import AutoTokenizer

    sp = sentencepiece.SentencePieceProcessor(model_file=str(_data_file("tokenizer.model.v1")))
    tok = AutoTokenizer.from_pretrained(str(built))
    assert len(tok) == sp.get_piece_size() == 32000
    for text in SAMPLES:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids), text
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<s>[INST] hi [/INST]"


@pytest.mark.skipif(not V0_PYTHON.is_file(), reason="no V0 environment (.venv) to compare with")
def test_same_files_as_the_v0_environment(built, tmp_path):
    other = tmp_path / "tokenizer-v0"
    r = subprocess.run([str(V0_PYTHON), "-c", "import sys, transformers\n"
                        "from dotvllm_plugin.devtools.tokenizers import save_mistral_sentencepiece\n"
                        "save_mistral_sentencepiece(sys.argv[1]); print(transformers.__version__)", str(other)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in FILES:
        assert filecmp.cmp(built / name, other / name, shallow=False), name


def test_the_demo_model_builds_here(built, tmp_path):
    from dotvllm_plugin.devtools.demo_model import build_model, model_is_current

    directory = build_model(tmp_path / "demo-model")
    assert model_is_current(directory)
    for name in FILES:
        assert filecmp.cmp(built / name, directory / name, shallow=False), name
