"""Demo: a tiny random-weight Llama served by stock ``vllm serve``, answering guided requests.

::

    python -m dotvllm_plugin.demo            # build the model if needed, serve it, send requests
    python -m dotvllm_plugin.demo build DIR  # only build the model into DIR
    python -m dotvllm_plugin.demo serve      # only serve it (until Ctrl-C)

The model is built locally (no hub access): Llama architecture, hidden size 64, 2 layers, 2 heads
(head size 32, which vLLM's CPU attention supports), random weights from a fixed seed, float32,
saved as safetensors, with the real Mistral 32k SentencePiece tokenizer from ``mistral-common``
(:func:`dotvllm_plugin.local_tokenizers.save_mistral_sentencepiece`, with a chat template). Its
output is noise, which is the point: whatever the model "wants", every guided output must satisfy
its constraint.

The server is plain ``vllm serve``; dotvllm-plugin takes over guided decoding through vLLM's
``vllm.general_plugins`` entry point when it is installed. The demo checks every output with
``re`` / ``jsonschema``, prints a table, and exits non-zero when an output violates its constraint
or a bad request is not answered with HTTP 400.

This module does not import vllm; it runs ``vllm serve`` as a child process. The server helpers
(:func:`ensure_model`, :func:`start_server`) are also used by the integration tests and the
end-to-end benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

__all__ = [
    "MODEL_NAME",
    "ServerProcess",
    "ServerStartError",
    "build_model",
    "default_model_dir",
    "ensure_model",
    "main",
    "plugin_present",
    "start_server",
]

MODEL_NAME = "demo"  # --served-model-name
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

SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SERVER_ARGS = ("--dtype", "float32", "--max-model-len", "1024", "--seed", "0")


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


def default_model_dir() -> Path:
    """``$DOTVLLM_CACHE_DIR/demo-model``, else ``.cache/demo-model`` in a source checkout, else
    ``~/.cache/dotvllm/demo-model``."""
    if os.environ.get("DOTVLLM_CACHE_DIR"):
        return Path(os.environ["DOTVLLM_CACHE_DIR"]) / "demo-model"
    repo = Path(__file__).resolve().parent.parent
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

    from .local_tokenizers import save_mistral_sentencepiece

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


# ------------------------------------------------------------------------------------------------
# Server
# ------------------------------------------------------------------------------------------------


class ServerStartError(RuntimeError):
    """``vllm serve`` exited or did not become healthy in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command() -> list[str]:
    """The ``vllm`` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "vllm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("vllm")
    if found:
        return [found]
    raise ServerStartError(
        "no `vllm` executable next to this Python or on PATH; run `bash scripts/setup_env.sh` and use "
        ".venv/bin/python"
    )


def log_tail(path: Path, max_chars: int = 6000) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return text[-max_chars:]


@dataclass
class ServerProcess:
    """A running ``vllm serve`` in its own process group."""

    process: subprocess.Popen
    base_url: str  # e.g. http://127.0.0.1:8123
    log_path: Path
    command: list[str]
    startup_s: float = float("nan")  # time from spawn to a healthy /health

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def healthy(self, timeout_s: float = 5.0) -> bool:
        import requests

        try:
            return requests.get(self.base_url + "/health", timeout=timeout_s).status_code == 200
        except requests.RequestException:
            return False

    def log(self, max_chars: int = 6000) -> str:
        return log_tail(self.log_path, max_chars)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the process group (API server, engine process, workers), SIGKILL after
        ``timeout_s``; return the exit code."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        # Children that outlived the API server (e.g. an engine process) share its group.
        _signal_group(self.process.pid, signal.SIGKILL)
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_server(
    model_dir: str | os.PathLike,
    *,
    frontend: str = "mp",
    extra_env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    log_path: str | os.PathLike | None = None,
    port: int | None = None,
    startup_timeout_s: float = 300.0,
) -> ServerProcess:
    """Start ``vllm serve model_dir`` on 127.0.0.1 and wait until ``/health`` answers 200.

    ``frontend="mp"`` is vLLM's default (API server + engine in a separate process);
    ``"inprocess"`` adds ``--disable-frontend-multiprocessing``. Raises :class:`ServerStartError`
    (with the end of the server log) if the server exits or is not healthy within
    ``startup_timeout_s``; the process group is killed then.
    """
    import requests

    if frontend not in ("mp", "inprocess"):
        raise ValueError(f"frontend must be 'mp' or 'inprocess', got {frontend!r}")
    port = port or free_port()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"vllm-serve-{frontend}-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    cmd = [
        *vllm_command(), "serve", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", MODEL_NAME,
        *SERVER_ARGS,
    ]
    if frontend == "inprocess":
        cmd.append("--disable-frontend-multiprocessing")
    cmd.extend(extra_args)
    env = {**os.environ, **SERVER_ENV, **(extra_env or {})}
    if not plugin_present() and "VLLM_USE_V1" not in (extra_env or {}):
        # Without dotvllm_plugin.vllm_v0 nothing forces the V0 engine; do it here so the built-in
        # guided-decoding backends of V0 answer.
        env["VLLM_USE_V1"] = "0"
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # own process group: stop() kills engine and workers too
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path, cmd)
    deadline = t0 + startup_timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"vllm serve exited with code {proc.returncode} during startup "
                    f"(log {log_path}):\n{server.log()}"
                )
            try:
                if requests.get(server.base_url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"vllm serve not healthy after {startup_timeout_s:.0f} s (log {log_path}):\n{server.log()}"
                )
            time.sleep(0.5)
    except BaseException:
        server.stop(timeout_s=10)
        raise
    server.startup_s = time.monotonic() - t0
    return server


def plugin_present() -> bool:
    """Is ``dotvllm_plugin.vllm_v0`` (the target of the ``vllm.general_plugins`` entry point) a real
    package here? Checked without importing it (it imports vllm)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("dotvllm_plugin.vllm_v0")
    except (ImportError, ValueError):
        return False
    # A directory without __init__.py is a namespace package: no register() to load.
    return spec is not None and spec.origin is not None and os.path.isfile(spec.origin)


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
            for line in resp.iter_lines(decode_unicode=True):
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
    print(f"plugin: {'dotvllm_plugin.vllm_v0 present' if plugin_present() else 'NOT present (vLLM built-in backends answer)'}")
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
