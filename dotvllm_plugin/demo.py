"""Demo: a tiny random-weight Llama served by stock ``vllm serve``, answering guided requests.

::

    python -m dotvllm_plugin.demo            # build the model if needed, serve it, send requests
    python -m dotvllm_plugin.demo build DIR  # only build the model into DIR
    python -m dotvllm_plugin.demo serve      # only serve it (until Ctrl-C)

The model is built locally (no hub access): Llama architecture, hidden size 64, 2 layers, 2 heads
(head size 32, which vLLM's CPU attention supports), random weights from a fixed seed, float32,
saved as safetensors, with the real Mistral 32k SentencePiece tokenizer from ``mistral-common``
(:mod:`dotvllm_plugin.devtools.demo_model`). Its output is noise, which is the point: whatever the
model "wants", every guided output must satisfy its constraint.

The server is plain ``vllm serve``; dotvllm-plugin takes over guided decoding through vLLM's
``vllm.general_plugins`` entry point when it is installed. The demo checks every output with
``re`` / ``jsonschema``, prints a table, and exits non-zero when an output violates its constraint
or a bad request is not answered with HTTP 400.

This module does not import vllm; it runs ``vllm serve`` as a child process
(:mod:`dotvllm_plugin.devtools.server`, also used by the integration tests and the end-to-end
benchmark).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .devtools.client import sse_lines
from .devtools.demo_model import SEED, build_model, default_model_dir, ensure_model, model_is_current
from .devtools.server import MODEL_NAME, ServerStartError, plugin_present, start_server

__all__ = [
    "Check",
    "DemoRequest",
    "Outcome",
    "choice_check",
    "demo_requests",
    "json_check",
    "main",
    "regex_check",
    "send",
]

# ------------------------------------------------------------------------------------------------
# Requests and checks
# ------------------------------------------------------------------------------------------------

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "admin": {"type": "boolean"},
    },
    "required": ["name", "age", "admin"],
    "additionalProperties": False,
}
ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 9},
        "tags": {"type": "array", "items": {"enum": ["new", "sale"]}, "maxItems": 2},
    },
    "required": ["color", "count", "tags"],
    "additionalProperties": False,
}
PHONE_REGEX = r"\(\d{3}\) \d{3}-\d{4}"
DATE_REGEX = r"20\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
# A Lark grammar (LALR(1)): a function call with keyword arguments, values nested at most twice.
CALL_GRAMMAR = r"""
start: NAME "(" [arg ("," arg)~0..2] ")"
arg: NAME "=" value
?value: NUMBER | "true" | "false" | "[" [NUMBER ("," NUMBER)~0..3] "]"
NAME: /[a-z_]{1,8}/
NUMBER: /-?[0-9]{1,4}/
%ignore " "
"""


@dataclass
class Check:
    """What a request must produce: ``validate(text)`` returns (ok, detail)."""

    describe: str
    validate: Callable[[str], tuple[bool, str]]
    validate_prefix: Callable[[str], tuple[bool, str]] | None = None


@dataclass
class DemoRequest:
    name: str
    endpoint: str  # "completions" | "chat"
    body: dict
    check: Check | None  # None: an invalid request, must be answered 400
    stream: bool = False
    expect_status: int = 200


@dataclass
class Outcome:
    request: DemoRequest
    status: int
    outputs: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    verdicts: list[tuple[str, str]] = field(default_factory=list)  # ("ok" | "VIOLATION" | "incomplete", detail)
    error: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        if self.status != self.request.expect_status:
            return True
        return any(v == "VIOLATION" for v, _ in self.verdicts)


def regex_check(pattern: str) -> Check:
    # The engine's dialect reads \d \w \s as ASCII classes (like JSON Schema's ECMA-262 regexes);
    # check with the same meaning.
    compiled = re.compile(pattern, re.ASCII)

    def full(text: str) -> tuple[bool, str]:
        ok = compiled.fullmatch(text) is not None
        return ok, "re.fullmatch" if ok else "does not fullmatch the regex"

    def prefix(text: str) -> tuple[bool, str]:
        try:
            import regex  # partial matching tells whether a truncated output can still match
        except ImportError:
            return True, "prefix not checked (no `regex` module)"
        ok = regex.fullmatch(pattern, text, flags=regex.ASCII, partial=True) is not None
        return ok, "valid prefix" if ok else "not a prefix of any match"

    return Check(f"regex {pattern}", full, prefix)


def grammar_check(grammar: str) -> Check:
    import lark

    parser = lark.Lark(grammar, parser="lalr")

    def validate(text: str) -> tuple[bool, str]:
        try:
            parser.parse(text)
        except lark.exceptions.LarkError as e:
            return False, f"lark: {str(e).splitlines()[0]}"
        return True, "parsed by lark"

    return Check("parsed by lark (LALR)", validate)


def choice_check(choices: list[str]) -> Check:
    return Check(f"one of {choices}", lambda t: (t in choices, "in choices" if t in choices else "not a choice"))


def _whitespace_outside_strings(text: str) -> list[str]:
    runs, i, n = [], 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
            continue
        if c == '"':
            in_string = True
            i += 1
        elif c in " \t\n\r":
            j = i
            while j < n and text[j] in " \t\n\r":
                j += 1
            runs.append(text[i:j])
            i = j
        else:
            i += 1
    return runs


def json_check(schema: dict | None, *, whitespace_pattern: str | None = None) -> Check:
    """Output must be JSON, an object, valid against ``schema`` (if given), and its whitespace
    between tokens must match ``whitespace_pattern`` (if given)."""

    def full(text: str) -> tuple[bool, str]:
        try:
            value = json.loads(text)
        except ValueError as e:
            return False, f"not JSON: {e}"
        if schema is None:
            if not isinstance(value, dict):
                return False, f"JSON {type(value).__name__}, not an object"
        else:
            import jsonschema

            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=str)
            if errors:
                return False, f"schema violation: {errors[0].message}"
        if whitespace_pattern is not None:
            bad = [w for w in _whitespace_outside_strings(text) if not re.fullmatch(whitespace_pattern, w)]
            if bad:
                return False, f"whitespace {bad[0]!r} does not match {whitespace_pattern!r}"
        return True, "valid JSON" + (" per schema" if schema is not None else " object")

    def prefix(text: str) -> tuple[bool, str]:
        try:
            import partial_json_parser
        except ImportError:
            return True, "prefix not checked (no partial_json_parser)"
        if not text.lstrip().startswith("{"):
            return False, "does not start with '{'"
        try:
            partial_json_parser.loads(text)
        except Exception as e:  # its error types vary between versions
            return False, f"not a JSON prefix: {e}"
        return True, "plausible JSON prefix"

    what = "JSON object" if schema is None else "JSON Schema " + json.dumps(schema, separators=(",", ":"))
    if whitespace_pattern is not None:
        what += f" with whitespace {whitespace_pattern!r}"
    return Check(what, full, prefix)


def demo_requests() -> list[DemoRequest]:
    """Every guided parameter of the OpenAI API, completions and chat, one stream, bad specs last."""
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    choices = ["positive", "negative", "neutral"]
    return [
        DemoRequest("completion guided_regex", "completions",
                    {"prompt": "Call me at ", "guided_regex": PHONE_REGEX, "max_tokens": 40},
                    regex_check(PHONE_REGEX)),
        DemoRequest("completion guided_choice n=2", "completions",
                    {"prompt": "The review was", "guided_choice": choices, "max_tokens": 10, "n": 2},
                    choice_check(choices)),
        DemoRequest("completion guided_json + guided_whitespace_pattern", "completions",
                    {"prompt": "A user record: ", "guided_json": PERSON_SCHEMA,
                     "guided_whitespace_pattern": r"[ ]?", "max_tokens": 120},
                    json_check(PERSON_SCHEMA, whitespace_pattern=r"[ ]?")),
        DemoRequest("chat guided_json", "chat",
                    {"messages": user("Describe a user as JSON."), "guided_json": PERSON_SCHEMA, "max_tokens": 120},
                    json_check(PERSON_SCHEMA)),
        DemoRequest("chat response_format json_schema", "chat",
                    {"messages": user("Place an order."), "max_tokens": 120,
                     "response_format": {"type": "json_schema",
                                         "json_schema": {"name": "order", "schema": ORDER_SCHEMA}}},
                    json_check(ORDER_SCHEMA)),
        DemoRequest("chat response_format json_object", "chat",
                    {"messages": user("Any JSON object, please."), "max_tokens": 200,
                     "response_format": {"type": "json_object"}},
                    json_check(None)),
        DemoRequest("chat guided_choice", "chat",
                    {"messages": user("Sentiment?"), "guided_choice": choices, "max_tokens": 10},
                    choice_check(choices)),
        DemoRequest("chat guided_regex (stream)", "chat",
                    {"messages": user("When?"), "guided_regex": DATE_REGEX, "max_tokens": 30},
                    regex_check(DATE_REGEX), stream=True),
        DemoRequest("completion guided_grammar (Lark)", "completions",
                    {"prompt": "plot(", "guided_grammar": CALL_GRAMMAR, "max_tokens": 60},
                    grammar_check(CALL_GRAMMAR)),
        DemoRequest("bad guided_grammar (colliding terminals) -> 400", "chat",
                    {"messages": user("x"), "guided_grammar": 'start: A | B\nA.2: /a+/\nB: /a+b/', "max_tokens": 5},
                    None, expect_status=400),
        DemoRequest("bad guided_regex '(' -> 400", "completions",
                    {"prompt": "x", "guided_regex": "(unclosed", "max_tokens": 5}, None, expect_status=400),
        DemoRequest("bad guided_json (type 5) -> 400", "chat",
                    {"messages": user("x"), "guided_json": {"type": 5}, "max_tokens": 5}, None,
                    expect_status=400),
    ]


def send(base_url: str, req: DemoRequest, *, timeout_s: float = 120.0) -> Outcome:
    import requests

    path = "/v1/completions" if req.endpoint == "completions" else "/v1/chat/completions"
    body = {"model": MODEL_NAME, "temperature": 1.0, "seed": SEED, **req.body}
    if req.stream:
        body["stream"] = True
    t0 = time.monotonic()
    try:
        resp = requests.post(base_url + path, json=body, timeout=timeout_s, stream=req.stream)
    except requests.RequestException as e:
        return Outcome(req, status=0, error=f"{type(e).__name__}: {e}", seconds=time.monotonic() - t0)
    out = Outcome(req, status=resp.status_code)
    with resp:
        if resp.status_code != 200:
            out.error = _error_message(resp)
        elif req.stream:
            texts: dict[int, list[str]] = {}
            finish: dict[int, str | None] = {}
            for line in sse_lines(resp):
                if not line or not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out.error = str(chunk["error"])
                    continue
                for ch in chunk.get("choices", []):
                    piece = ch.get("text") if req.endpoint == "completions" else (ch.get("delta") or {}).get("content")
                    texts.setdefault(ch["index"], []).append(piece or "")
                    if ch.get("finish_reason"):
                        finish[ch["index"]] = ch["finish_reason"]
            out.outputs = ["".join(texts[i]) for i in sorted(texts)]
            out.finish_reasons = [finish.get(i) for i in sorted(texts)]
        else:
            payload = resp.json()
            for ch in payload["choices"]:
                out.outputs.append(ch["text"] if req.endpoint == "completions" else ch["message"]["content"] or "")
                out.finish_reasons.append(ch.get("finish_reason"))
    out.seconds = time.monotonic() - t0
    if req.check is not None and out.status == 200:
        if not out.outputs and not out.error:
            out.error = "no output"
        for text, reason in zip(out.outputs, out.finish_reasons):
            out.verdicts.append(judge(req.check, text, reason))
        if out.error:  # an error inside a 200 stream counts as a failure
            out.verdicts.append(("VIOLATION", out.error))
    return out


def judge(check: Check, text: str, finish_reason: str | None) -> tuple[str, str]:
    if finish_reason == "length":
        # Cut by max_tokens: the output cannot be complete, but must still be a valid prefix.
        ok, detail = check.validate_prefix(text) if check.validate_prefix else (True, "not checked")
        return ("incomplete" if ok else "VIOLATION"), f"hit max_tokens; {detail}"
    ok, detail = check.validate(text)
    return ("ok" if ok else "VIOLATION"), detail


def _error_message(resp) -> str:
    try:
        payload = resp.json()
    except ValueError:
        return resp.text[:300]
    err = payload.get("error", payload)
    if isinstance(err, dict):
        return str(err.get("message", err))
    return str(payload.get("message", err))


def print_outcome(o: Outcome, index: int, *, file=sys.stdout) -> None:
    r = o.request
    p = lambda *a: print(*a, file=file)  # noqa: E731
    shown = {k: v for k, v in r.body.items() if k not in ("max_tokens",)}
    p(f"[{index}] {r.name}  ({'stream' if r.stream else 'no stream'}, {o.seconds:.2f} s)")
    p(textwrap.indent(f"POST /v1/{'completions' if r.endpoint == 'completions' else 'chat/completions'} "
                      f"{json.dumps(shown, ensure_ascii=False)}", "    "))
    if r.check is None or o.status != 200:
        verdict = "ok" if o.status == r.expect_status else "FAILED"
        p(f"    -> HTTP {o.status} (expected {r.expect_status}): {verdict}")
        if o.error:
            p(f"       {o.error[:300]}")
        return
    p(f"    constraint: {r.check.describe}")
    for text, reason, (verdict, detail) in zip(o.outputs, o.finish_reasons, o.verdicts):
        p(f"    -> {json.dumps(text, ensure_ascii=False)}")
        p(f"       finish={reason}  {verdict.upper() if verdict != 'VIOLATION' else verdict}: {detail}")
    for verdict, detail in o.verdicts[len(o.outputs):]:
        p(f"    -> {verdict}: {detail}")


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    print(f"model: {model_dir}" + ("" if model_is_current(model_dir) else " (building)"), flush=True)
    model_dir = ensure_model(model_dir)
    print(f"plugin: {'dotvllm_plugin.integrations.vllm_v0 present' if plugin_present() else 'NOT present (vLLM built-in backends answer)'}")
    print("starting vllm serve (takes 25-60 s on a small CPU) ...", flush=True)
    try:
        server = start_server(model_dir, frontend=args.frontend, log_path=args.log, port=args.port,
                              startup_timeout_s=args.startup_timeout)
    except ServerStartError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    print(f"server pid {server.pid} at {server.base_url}, healthy after {server.startup_s:.1f} s (log {server.log_path})\n")
    outcomes = []
    try:
        for i, req in enumerate(demo_requests(), 1):
            o = send(server.base_url, req)
            outcomes.append(o)
            print_outcome(o, i)
            sys.stdout.flush()
        alive = server.healthy()
        print(f"\nserver still healthy after all requests: {alive}")
    finally:
        code = server.stop()
        print(f"server stopped (pid {server.pid}, exit code {code})")
    failed = [o for o in outcomes if o.failed]
    incomplete = sum(v == "incomplete" for o in outcomes for v, _ in o.verdicts)
    n_out = sum(len(o.verdicts) for o in outcomes)
    print(f"\n{len(outcomes)} requests, {n_out} outputs checked, {len(failed)} failed, "
          f"{incomplete} cut by max_tokens (valid prefixes); {time.monotonic() - t0:.0f} s in all")
    if failed or not alive:
        for o in failed:
            print(f"FAILED: {o.request.name}: HTTP {o.status}; "
                  + "; ".join(d for v, d in o.verdicts if v == "VIOLATION") + (f" {o.error}" if o.error else ""),
                  file=sys.stderr)
        if not alive:
            print(f"FAILED: the server did not survive the requests; log tail:\n{server.log(3000)}", file=sys.stderr)
        return 1
    print("all outputs satisfy their constraints")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    model_dir = ensure_model(args.model_dir)
    server = start_server(model_dir, frontend=args.frontend, log_path=args.log, port=args.port,
                          startup_timeout_s=args.startup_timeout)
    print(f"serving model '{MODEL_NAME}' at {server.base_url} (pid {server.pid}, log {server.log_path}); Ctrl-C stops")
    try:
        while server.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dotvllm_plugin.demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action")
    p_build = sub.add_parser("build", help="build the tiny random-weight demo model into DIR")
    p_build.add_argument("dir", nargs="?", default=None)
    for name, helptext in (("run", "serve the model and send the demo requests (default)"),
                           ("serve", "only serve the model until Ctrl-C")):
        p = sub.add_parser(name, help=helptext)
        _server_options(p)
    _server_options(parser)
    args = parser.parse_args(argv)
    if args.action == "build":
        t0 = time.monotonic()
        path = build_model(args.dir or default_model_dir())
        print(f"built demo model in {path} ({time.monotonic() - t0:.1f} s)")
        return 0
    if args.action == "serve":
        return run_serve(args)
    return run_demo(args)


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default=None, help="model directory (default: %(default)s → cache)")
    p.add_argument("--frontend", choices=("mp", "inprocess"), default="mp")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--log", default=None, help="server log file (default: a temporary file)")
    p.add_argument("--startup-timeout", type=float, default=300.0)


if __name__ == "__main__":
    sys.exit(main())
