"""The demo model: a tiny random-weight Llama with the real Mistral 32k tokenizer, built locally.

Llama architecture, hidden size 64, 2 layers, 2 heads (head size 32, which vLLM's CPU attention
supports), random weights from a fixed seed, float32, saved as safetensors, with the Mistral 32k
SentencePiece tokenizer from ``mistral-common``
(:func:`dotvllm_plugin.devtools.tokenizers.save_mistral_sentencepiece`, with a chat template).
No hub access. The recipe is written into the model directory, so a changed recipe rebuilds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["MODEL_RECIPE", "RECIPE_FILE", "SEED", "build_model", "default_model_dir", "ensure_model", "model_is_current"]

SEED = 1234

# Everything that defines the model; written into the model directory so a changed recipe rebuilds.
MODEL_RECIPE = {
    "recipe": 1,
    "architecture": "LlamaForCausalLM",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "seed": SEED,
    "dtype": "float32",
    "tokenizer": "mistral-sentencepiece-v1",
}
RECIPE_FILE = "dotvllm-demo-recipe.json"


def default_model_dir() -> Path:
    """``$DOTVLLM_CACHE_DIR/demo-model``, else ``.cache/demo-model`` in a source checkout, else
    ``~/.cache/dotvllm/demo-model``."""
    if os.environ.get("DOTVLLM_CACHE_DIR"):
        return Path(os.environ["DOTVLLM_CACHE_DIR"]) / "demo-model"
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and os.access(repo, os.W_OK):
        return repo / ".cache" / "demo-model"
    return Path.home() / ".cache" / "dotvllm" / "demo-model"


def model_is_current(directory: Path) -> bool:
    try:
        recipe = json.loads((Path(directory) / RECIPE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return recipe == MODEL_RECIPE


def build_model(directory: str | os.PathLike) -> Path:
    """Build the demo model into ``directory`` (replaced atomically) and return its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .tokenizers import save_mistral_sentencepiece

    directory = Path(directory).resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".tmp", dir=directory.parent))
    try:
        save_mistral_sentencepiece(tmp)
        r = MODEL_RECIPE
        config = LlamaConfig(
            vocab_size=r["vocab_size"],
            hidden_size=r["hidden_size"],
            intermediate_size=r["intermediate_size"],
            num_hidden_layers=r["num_hidden_layers"],
            num_attention_heads=r["num_attention_heads"],
            num_key_value_heads=r["num_key_value_heads"],
            max_position_embeddings=r["max_position_embeddings"],
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
            tie_word_embeddings=False,
            torch_dtype="float32",
        )
        torch.manual_seed(r["seed"])
        model = LlamaForCausalLM(config).to(torch.float32).eval()
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / RECIPE_FILE).write_text(json.dumps(MODEL_RECIPE, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp made it private
        for f in tmp.iterdir():
            f.chmod(0o644)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def ensure_model(directory: str | os.PathLike | None = None) -> Path:
    """Return the demo model directory, building it first if it is missing or outdated."""
    directory = Path(directory) if directory is not None else default_model_dir()
    if not model_is_current(directory):
        build_model(directory)
    return directory.resolve()
