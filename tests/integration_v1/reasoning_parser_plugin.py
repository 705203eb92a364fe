"""A reasoning parser for the demo model, loaded by ``vllm serve --reasoning-parser-plugin`` in
``test_v1_reasoning.py``.

No reasoning parser of vLLM works with the demo model's tokenizer (Mistral 32k SentencePiece): the
``<think>``/``</think>`` parsers (deepseek_r1, ernie45, minimax_m3, hy_v3, step3, ...) refuse to
start without those tokens; olmo3 wants byte-level BPE pieces ("Ġ</"); mistral wants the
``[THINK]`` tokens of a mistral-common tokenizer; the engine-based ones (qwen3, glm45, kimi_k2,
...) start but never see reasoning end (no end token id), and deepseek_v3, gemma4 and
openai_gptoss report it ended from the first token. So this one is vLLM's own deepseek_r1 parser
(``DeepSeekR1ReasoningParser``: reasoning from the first output token, the start token optional,
as R1's chat template opens it in the prompt) with two ordinary single-token pieces of that
vocabulary as delimiters: ``think`` opens and ``END`` closes the reasoning. vLLM's
structured-output manager does the gating, as for any parser.
"""

from vllm.reasoning import ReasoningParserManager
from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser

NAME = "dotvllm_test_end"
START = "think"
END = "END"


@ReasoningParserManager.register_module(NAME)
class EndReasoningParser(DeepSeekR1ReasoningParser):
    @property
    def start_token(self) -> str:
        return START

    @property
    def end_token(self) -> str:
        return END
