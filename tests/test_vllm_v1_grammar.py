"""The V1 grammar wrapper (``integrations.vllm_v1.grammar``) against the matcher it wraps: what
vLLM V1's scheduler does with speculative decoding (validate drafts, advance over them while
filling bitmasks, roll back) must leave it where the matcher alone would be. No vLLM needed."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dotvllm_plugin import GrammarCompiler
from dotvllm_plugin.integrations.vllm_v1.grammar import DotvllmGrammar
from dotvllm_plugin.matcher import GrammarMatcher

EOS = 256

SPECS = [
    pytest.param("regex", r"[a-c]{2,5}-(x|yz)", id="regex"),
    pytest.param("grammar", 'start: "(" start ")" | "ab"', id="lark-pushdown"),
    pytest.param("json_schema", {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                                 "additionalProperties": False}, id="json"),
]


def _compiled(byte_vocab, kind, spec):
    c = GrammarCompiler(byte_vocab)
    if kind == "regex":
        return c.compile_regex(spec)
    if kind == "grammar":
        return c.compile_grammar(spec)
    return c.compile_json_schema(spec)


def _walk(matcher: GrammarMatcher, rng: random.Random, n: int) -> list[int]:
    """A random walk over allowed tokens (EOS only where nothing else is allowed)."""
    m = matcher.copy() if hasattr(matcher, "copy") else matcher
    out = []
    for _ in range(n):
        allowed = [int(t) for t in m.allowed_token_ids() if t != EOS]
        if not allowed:
            break
        t = rng.choice(allowed)
        assert m.accept_token(t)
        out.append(t)
    return out


@pytest.mark.parametrize(("kind", "spec"), SPECS)
def test_speculative_cycle_matches_the_matcher(byte_vocab, kind, spec):
    compiled = _compiled(byte_vocab, kind, spec)
    rng = random.Random(0)
    for trial in range(30):
        g = DotvllmGrammar(GrammarMatcher(compiled), description=kind, eos_token_ids=(EOS,))
        ref = GrammarMatcher(compiled)
        prefix = _walk(ref, rng, rng.randint(0, 3))
        assert g.accept_tokens("r", prefix) and all(ref.accept_token(t) for t in prefix)
        good = _walk(ref, rng, 4)
        drafts = good[:2] + [rng.randrange(256)] + good[2:]
        accepted = g.validate_tokens(drafts)
        assert accepted == drafts[: ref.validate_tokens(drafts)]
        # vLLM advances over the accepted drafts to fill one bitmask row per position, then rolls back.
        rows = torch.zeros((len(accepted) + 1, 9), dtype=torch.int32)
        for i, t in enumerate(accepted):
            g.fill_bitmask(rows, i)
            assert g.accept_tokens("r", [t])
        g.fill_bitmask(rows, len(accepted))
        g.rollback(len(accepted))
        expected = torch.zeros(9, dtype=torch.int32)
        ref.fill_next_token_bitmask(expected.unsqueeze(0), 0)
        probe = torch.zeros((1, 9), dtype=torch.int32)
        g.fill_bitmask(probe, 0)
        assert torch.equal(probe[0], expected), trial
        assert g.num_processed_tokens == len(prefix)


def test_a_refused_token_leaves_the_state_unchanged(byte_vocab):
    compiled = _compiled(byte_vocab, "regex", "abc")
    g = DotvllmGrammar(GrammarMatcher(compiled), eos_token_ids=(EOS,))
    assert not g.accept_tokens("r", [ord("a"), ord("b"), ord("x")])
    assert g.validate_tokens([ord(c) for c in "abc"] + [EOS]) == [ord(c) for c in "abc"] + [EOS]
    assert g.accept_tokens("r", [ord(c) for c in "abc"] + [EOS])
    assert g.is_terminated()
    g.rollback(1)
    assert not g.is_terminated()
    g.reset()
    assert g.num_processed_tokens == 0 and g.validate_tokens([ord("a")]) == [ord("a")]


def test_a_dead_grammar_allows_only_eos(byte_vocab):
    g = DotvllmGrammar(None, description="broken", eos_token_ids=(EOS,))
    mask = np.full((2, 9), -1, dtype=np.int32)
    g.fill_bitmask(mask, 1)
    bits = np.unpackbits(mask[1].view(np.uint8), bitorder="little")
    assert np.flatnonzero(bits).tolist() == [EOS]
    assert g.validate_tokens([1, EOS]) == [] and g.validate_tokens([EOS, 1]) == [EOS]
    assert not g.accept_tokens("r", [1]) and not g.is_terminated()
    assert g.accept_tokens("r", [EOS]) and g.is_terminated()


def test_rollback_past_the_history_does_not_raise(byte_vocab):
    g = DotvllmGrammar(GrammarMatcher(_compiled(byte_vocab, "regex", "a+")), eos_token_ids=(EOS,))
    assert g.accept_tokens("r", [ord("a")])
    g.rollback(5)  # logged, never raised: an exception here would stop vLLM's engine core


def test_per_request_counts_are_counted_in_this_process():
    from dotvllm_plugin.integrations import _runtime
    from dotvllm_plugin.integrations.vllm_v1 import metrics

    def hits(snapshot):
        return sum(v for kind, outcome, v in snapshot["compiles"] if (kind, outcome) == ("regex", "hit"))

    before = _runtime.metrics_snapshot()
    for _ in range(3):
        metrics.record_request("choice")
        metrics.record_cache_hit("regex")
    after = _runtime.metrics_snapshot()
    assert after["requests"].get("choice", 0) == before["requests"].get("choice", 0) + 3
    assert hits(after) == hits(before) + 3


def test_snapshot_writes_are_rate_limited_and_the_last_counts_written_at_exit(tmp_path):
    # A burst of counts costs one snapshot write, not one per count (the write is the expensive
    # part); counts still waiting for the publisher's next write when the process exits are
    # written on the way out. With an interval of an hour, a run that writes more than twice
    # (the first count at once, the rest at exit) or loses a count fails.
    import json
    import os
    import subprocess
    import sys

    from dotvllm_plugin.integrations import _runtime

    writes = tmp_path / "writes.log"
    code = f"""
import os, time
from dotvllm_plugin.integrations import _runtime
from dotvllm_plugin.integrations.vllm_v1 import metrics
_runtime.PUBLISH_INTERVAL_S = 3600.0
original = _runtime._publish
def counted():
    with open({str(writes)!r}, "a") as f:
        f.write("write\\n")
    original()
_runtime._publish = counted
metrics.record_request("choice")
deadline = time.monotonic() + 60
while not os.path.exists({str(writes)!r}) and time.monotonic() < deadline:
    time.sleep(0.01)
assert os.path.exists({str(writes)!r}), "the first count was not written"
for _ in range(50):
    metrics.record_request("choice")
    metrics.record_cache_hit("regex")
time.sleep(0.3)
"""
    metrics_dir = tmp_path / "snapshots"
    metrics_dir.mkdir()
    env = {**os.environ, _runtime.METRICS_DIR_ENV: str(metrics_dir)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    (snapshot,) = metrics_dir.glob("*.json")
    data = json.loads(snapshot.read_text())
    assert data["requests"] == {"choice": 51}
    assert [list(c) for c in data["compiles"] if c[0] == "regex"] == [["regex", "hit", 50]]
    assert writes.read_text().splitlines() == ["write", "write"]
