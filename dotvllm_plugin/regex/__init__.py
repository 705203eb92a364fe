"""Regular expression → byte-level DFA. Knows nothing of tokens.

The pipeline (:func:`regex_to_dfa`): :mod:`.parse` checks the pattern (Python ``re`` dialect,
non-regular constructs refused with their position), :mod:`.glushkov` builds the automaton from
the parse tree over the code-point sets of :mod:`.charsets` (interegular's own FSM algebra is the
fallback and the reference), and :mod:`.automaton` turns characters into UTF-8 byte paths, trims
and minimises. The hot loops are in the C extension ``dotvllm_plugin._cwalk`` when it is built.
"""

from __future__ import annotations

import re

from ..errors import RegexSyntaxError, UnsupportedFeatureError
from .automaton import MAX_DFA_STATES, Builder, ByteDFA, byte_classes, byte_dfa_from_fsm, reachable, trim
from .charsets import char_class_ranges, utf8_sequences
from .glushkov import Unhandled, glushkov_dfa, sre_glushkov_dfa
from .parse import check_regex, checked, clip, parse_interegular, sre_parse

__all__ = ["MAX_DFA_STATES", "ByteDFA", "byte_classes", "check_regex", "reachable", "regex_to_dfa"]


def regex_to_dfa(
    pattern: str, *, max_states: int = MAX_DFA_STATES, fast: bool = True, check_syntax: bool = True
) -> ByteDFA:
    """Compile ``pattern`` (full-match semantics) into a trimmed byte-level DFA.

    ``fast=False`` uses interegular's own FSM construction (the reference implementation).
    ``check_syntax=False`` skips Python's parser, which only serves error messages: for regexes
    this package generated itself.
    """
    if fast:
        rewritten = checked(pattern, check_syntax)
        try:
            trans, accepting = sre_glushkov_dfa(
                sre_parse(rewritten),
                max_states=max_states,
                char_ranges=char_class_ranges,
                utf8_sequences=utf8_sequences,
                builder_cls=Builder,
            )
        except (Unhandled, re.error, OverflowError):
            pass  # interegular's parse below handles (or reports) it
        except RecursionError as e:
            raise UnsupportedFeatureError(f"regex nests too deeply: {clip(pattern)}", feature="nesting depth") from e
        else:
            return trim(trans, accepting, pattern)
    parsed = parse_interegular(pattern, check_syntax=False) if fast else parse_interegular(pattern, check_syntax)
    if fast:
        try:
            trans, accepting = glushkov_dfa(
                parsed,
                max_states=max_states,
                char_ranges=char_class_ranges,
                utf8_sequences=utf8_sequences,
                builder_cls=Builder,
            )
        except Unhandled:
            pass
        except RecursionError as e:
            raise UnsupportedFeatureError(f"regex nests too deeply: {clip(pattern)}", feature="nesting depth") from e
        else:
            return trim(trans, accepting, pattern)
    try:
        fsm = parsed.to_fsm()
    except RecursionError as e:
        raise UnsupportedFeatureError(f"regex nests too deeply: {clip(pattern)}", feature="nesting depth") from e
    except Exception as e:  # interegular raises bare Exception for e.g. a{3,1}
        raise RegexSyntaxError(f"invalid regex {clip(pattern)}: {e}", pattern=pattern) from e
    return byte_dfa_from_fsm(fsm, pattern, max_states)
