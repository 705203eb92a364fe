"""Shared helpers for the benchmarks: tokenizers, machine info, statistics, tables, isolation.

Every engine runs in its own worker process (``multiprocessing`` *spawn* context), initialised
once with the tokenizer, single-threaded, its start-up heap then frozen (``gc.freeze``, see
:func:`gc_freeze_enabled`). Each case is sent to the worker; the parent waits with a
deadline and kills + restarts the worker when a compile or walk runs past it, so one pathological
case cannot hang a run (outlines-core has taken minutes on a single regex).
"""

from __future__ import annotations

import os

# Single-threaded engines, set before any engine or numeric library is imported (also inherited by
# the spawned workers).
for _var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datetime as _dt
import functools
import gc
import json
import math
import multiprocessing as mp
import platform
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DOCS_DIR = REPO_ROOT / "docs"
VOCAB_SIZE = {"tekken": 131072, "mistral32k": 32000}

__all__ = [
    "DOCS_DIR",
    "EngineWorker",
    "REPO_ROOT",
    "RESULTS_DIR",
    "format_table",
    "load_tokenizer",
    "machine_info",
    "markdown_table",
    "percentiles",
    "token_bytes_table",
    "write_json",
]


# --------------------------------------------------------------------------------------------
# Tokenizers


@functools.lru_cache(maxsize=None)
def load_tokenizer(name: str = "tekken"):
    """A real Hugging Face fast tokenizer built locally (never from the hub)."""
    from dotvllm_plugin.devtools import tokenizers

    if name == "tekken":
        return tokenizers.tekken()
    if name == "mistral32k":
        return tokenizers.mistral_sentencepiece()
    raise ValueError(f"unknown tokenizer {name!r}; expected 'tekken' or 'mistral32k'")


@functools.lru_cache(maxsize=None)
def token_bytes_table(name: str = "tekken") -> tuple:
    """Token id -> exact bytes for every ordinary token; ``None`` for special/added tokens.

    Byte-level BPE (Tekken) through GPT-2's byte<->unicode table; SentencePiece through ``▁`` =
    space and ``<0xNN>`` byte fallback. Used to build outlines-core's ``Vocabulary`` and checked
    against :class:`dotvllm_plugin.Vocabulary` by ``python -m benchmarks._common --check-vocab``.
    """
    tok = load_tokenizer(name)
    size = VOCAB_SIZE[name]
    special = set(tok.all_special_ids) | set(tok.get_added_vocab().values())
    pieces = tok.convert_ids_to_tokens(list(range(size)))
    out: list = []
    if name == "tekken":
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

        decoder = {c: b for b, c in bytes_to_unicode().items()}
        for i, piece in enumerate(pieces):
            out.append(None if i in special else bytes(decoder[c] for c in piece))
    else:
        for i, piece in enumerate(pieces):
            if i in special:
                out.append(None)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out.append(bytes([int(piece[3:5], 16)]))
            else:
                out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _bytes_to_id(name: str) -> dict:
    return {b: i for i, b in enumerate(token_bytes_table(name)) if b is not None}


def encode(name: str, text: str) -> list[int]:
    """Tokenize ``text`` as a model would emit it: no BOS, special-token strings kept as text.

    SentencePiece prepends a dummy space to the first word; generated text continues a prompt and
    has none, so the first token is re-tokenized without it (greedy longest match).
    """
    tok = load_tokenizer(name)
    ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
    table = token_bytes_table(name)
    if name == "mistral32k" and ids and (table[ids[0]] or b"").startswith(b" "):
        rest, lookup, head = table[ids[0]][1:], _bytes_to_id(name), []
        while rest:
            for n in range(len(rest), 0, -1):
                if rest[:n] in lookup:
                    head.append(lookup[rest[:n]])
                    rest = rest[n:]
                    break
            else:
                raise ValueError(f"cannot re-tokenize {rest!r}")
        ids = head + ids[1:]
    return ids


def token_text(name: str, ids: list[int]) -> bytes:
    """The exact bytes a token sequence stands for (to check a tokenization round-trips)."""
    table = token_bytes_table(name)
    return b"".join(table[i] or b"\0SPECIAL\0" for i in ids)


# --------------------------------------------------------------------------------------------
# Which engine is measured


def use_core_snapshot(ref: str) -> dict:
    """Measure ``dotvllm_plugin`` as committed at ``ref`` instead of the (possibly edited) work tree.

    Extracts ``git archive ref dotvllm_plugin`` into a temporary directory and puts it first on
    ``sys.path``; spawned engine workers inherit ``sys.path``. Returns ``{"ref":, "commit":, "path":}``.
    """
    import tarfile
    import tempfile
    import io

    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", ref], capture_output=True, text=True,
                            check=True).stdout.strip()
    has_setup = subprocess.run(["git", "-C", str(REPO_ROOT), "cat-file", "-e", f"{commit}:setup.py"]).returncode == 0
    paths = ["dotvllm_plugin"] + (["setup.py"] if has_setup else [])
    data = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit, *paths], capture_output=True,
                          check=True).stdout
    root = Path(tempfile.gettempdir()) / f"dotvllm-core-{commit[:12]}"
    if not (root / "dotvllm_plugin" / "__init__.py").exists():
        tmp = Path(tempfile.mkdtemp(prefix="dotvllm-core-"))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tmp, filter="data")
        if has_setup:
            # The optional C extension, built by the project's own setup.py as an install would.
            subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=tmp, check=True,
                           capture_output=True)
        try:
            os.replace(tmp, root)
        except OSError:
            pass
    if "dotvllm_plugin" in sys.modules:
        raise RuntimeError("use_core_snapshot() must run before dotvllm_plugin is imported")
    sys.path.insert(0, str(root))
    return {"ref": ref, "commit": commit, "path": str(root)}


def core_source() -> str:
    import dotvllm_plugin

    return str(Path(dotvllm_plugin.__file__).resolve().parent)


# --------------------------------------------------------------------------------------------
# Machine, versions


PACKAGES = (
    "dotvllm-plugin",
    "xgrammar",
    "outlines_core",
    "llguidance",
    "interegular",
    "numpy",
    "torch",
    "transformers",
    "tokenizers",
    "mistral_common",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _dirty_core_files() -> list[str]:
    """Uncommitted changes under dotvllm_plugin/ (the engine measured is the working tree's)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "dotvllm_plugin"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine_info() -> dict[str, Any]:
    try:
        import psutil

        mem_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        mem_gib = None
    return {
        "utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "git_commit": _git_commit(),
        "uncommitted_core_files": _dirty_core_files(),
        "versions": package_versions(),
        "env": {k: os.environ.get(k) for k in (
            "RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }


# --------------------------------------------------------------------------------------------
# Statistics and output


SCHEDULES = ("blocks", "interleaved")
SCHEDULE_HELP = ("blocks: each engine runs every case in turn, one engine after the other, so no engine's "
                 "compile runs between two of another's (a long compile leaves the next engine cold CPU "
                 "caches); interleaved: every engine on case 1, then case 2, ... (runs before 2026-12-06)")


def schedule(n_cases: int, engines: Sequence[str], how: str) -> list[tuple[int, list[str]]]:
    """The order cases run in: ``(case index, engines to run it on)`` steps, by ``how`` (one of
    :data:`SCHEDULES`)."""
    if how == "interleaved":
        return [(i, list(engines)) for i in range(n_cases)]
    if how == "blocks":
        return [(i, [e]) for e in engines for i in range(n_cases)]
    raise ValueError(f"unknown schedule {how!r}; choose from {SCHEDULES}")


def percentiles(values: Iterable[float], ps: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": .., "p90": .., "max": .., "mean": .., "n": ..}``; NaNs when empty."""
    import numpy as np

    arr = np.asarray(list(values) if not hasattr(values, "__len__") else values, dtype=float)
    if arr.size == 0:
        return {**{f"p{p:g}": math.nan for p in ps}, "max": math.nan, "mean": math.nan, "n": 0}
    out = {f"p{p:g}": float(np.percentile(arr, p)) for p in ps}
    out.update(max=float(arr.max()), mean=float(arr.mean()), n=int(arr.size))
    return out


def fmt_ms(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x >= 1000:
        return f"{x / 1000:.1f} s"
    if x >= 10:
        return f"{x:.0f} ms"
    if x >= 1:
        return f"{x:.1f} ms"
    return f"{x:.2f} ms"


def fmt_us(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x >= 1000:
        return f"{x / 1000:.1f} ms"
    return f"{x:.1f} µs" if x < 100 else f"{x:.0f} µs"


def fmt_bytes(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f} B"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def esc(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: Path, obj: Any) -> None:
    """Atomic write (``.tmp`` then rename) so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=_json_default,
                              allow_nan=True) + "\n")
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Memory of the current process (Linux)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@functools.lru_cache(maxsize=None)
def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def reset_peak_rss() -> None:
    """Return free heap pages to the OS (``malloc_trim``), then reset VmHWM (``clear_refs`` = 5).

    Without the trim, a compile that reuses memory freed by earlier work shows no RSS growth.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kb("VmHWM") * 1024


# --------------------------------------------------------------------------------------------
# Isolated engine workers


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the benchmark process that started it dies (a worker
    busy in an engine's C code would otherwise finish its case first, orphaned)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def gc_freeze_enabled() -> bool:
    """Whether engine workers freeze their start-up heap after warm-up (``DOTVLLM_BENCH_GC_FREEZE``,
    default on; ``0`` measures with the whole heap under the cyclic collector, as runs before
    2026-12-06 did)."""
    return os.environ.get("DOTVLLM_BENCH_GC_FREEZE", "1") != "0"


def _worker_main(conn, engine_name: str, tokenizer_name: str, warm_up: tuple) -> None:
    _die_with_parent()
    try:
        from benchmarks import _engines

        t0 = time.perf_counter()
        engine = _engines.make_engine(engine_name, tokenizer_name, warm_up)
        frozen = gc_freeze_enabled()
        if frozen:
            # The process's start-up heap (modules, tokenizer, the engine's vocabulary tables),
            # frozen as vLLM's API server and engine core freeze theirs and our compile workers
            # theirs: the cyclic collector no longer traverses it while cases run. Every engine alike.
            gc.collect()
            gc.freeze()
        info = {"init_s": time.perf_counter() - t0, "pid": os.getpid(), "gc_freeze": frozen, **engine.describe()}
        conn.send(("ready", info))
    except BaseException as e:  # report, then die: the parent marks the engine unavailable
        conn.send(("init_error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            if isinstance(msg, tuple) and msg[0] == "rss":  # the memory pass: one untimed compile
                conn.send(("rss", _engines.compile_rss_delta(engine, msg[1])))
                continue
            for part in _engines.run_case(engine, msg):
                conn.send(part)
        except BaseException as e:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class EngineWorker:
    """One engine in a child process; ``run_case`` enforces per-phase deadlines.

    A case yields two messages from the worker: ``("compiled", {...})`` then ``("walked", {...})``
    (the latter only if the compile succeeded). The compile deadline covers the first, the walk
    deadline the second; past either, the worker is killed and restarted for the next case.
    """

    def __init__(self, engine_name: str, tokenizer_name: str = "tekken", init_timeout_s: float = 600, *,
                 warm_up: tuple = ("regex", "json_schema"), max_rss_gib: float = 6.0):
        self.engine_name = engine_name
        self.tokenizer_name = tokenizer_name
        self.warm_up = tuple(warm_up)
        self.max_rss_bytes = int(max_rss_gib * 2**30)
        self.init_timeout_s = init_timeout_s
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self.info: dict | None = None
        self.restarts = 0
        self.start_error: str | None = None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self.engine_name, self.tokenizer_name, self.warm_up),
                                 daemon=True, name=f"bench-{self.engine_name}")
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        got = self._wait(self.init_timeout_s)
        if got != "ready":
            self._kill()
            raise RuntimeError(f"{self.engine_name}: worker did not start ({got}, limit {self.init_timeout_s:g} s, "
                               f"{self.max_rss_bytes / 2**30:.1f} GiB)")
        kind, payload = parent.recv()
        if kind != "ready":
            self._kill()
            raise RuntimeError(f"{self.engine_name}: worker failed to start: {payload}")
        if self.info is None:
            self.info = payload

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(5)
            except (OSError, BrokenPipeError):
                pass
        self._kill()

    def _wait(self, timeout_s: float) -> str:
        """Wait for a message: ``"ready"``, ``"timeout"`` or ``"memory"`` (RSS watchdog)."""
        deadline = time.monotonic() + timeout_s
        proc = None
        try:
            import psutil

            proc = psutil.Process(self._proc.pid)
        except Exception:
            pass
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            if self._conn.poll(min(left, 0.1)):
                return "ready"
            if proc is not None and self.max_rss_bytes:
                try:
                    if proc.memory_info().rss > self.max_rss_bytes:
                        return "memory"
                except Exception:
                    pass

    def _receive(self, timeout_s: float):
        """Next message, ``("timeout", None)``, ``("memory", None)`` or ``("crash", exitcode)``."""
        try:
            got = self._wait(timeout_s)
            if got != "ready":
                self._kill()
                self.restarts += 1
                return got, None
            return self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(5)
            code = self._proc.exitcode
            self._kill()
            self.restarts += 1
            return "crash", code

    def start(self) -> bool:
        """Start the worker if needed; after a failed start the engine stays unavailable."""
        if self._proc is None and self.start_error is None:
            try:
                self._start()
            except RuntimeError as e:
                self.start_error = str(e)
        return self.start_error is None

    def run_case(self, case: dict, *, compile_timeout_s: float, walk_timeout_s: float) -> dict:
        if not self.start():
            return {"status": "engine_unavailable", "error": self.start_error[:2000]}
        self._conn.send(case)
        kind, payload = self._receive(compile_timeout_s)
        if kind == "timeout":
            return {"status": "timeout", "error": f"compile exceeded {compile_timeout_s:g} s"}
        if kind == "memory":
            return {"status": "memory_limit", "error": f"worker RSS exceeded {self.max_rss_bytes / 2**30:.1f} GiB while compiling"}
        if kind == "crash":
            return {"status": "crash", "error": f"worker died (exit code {payload}) while compiling"}
        if kind == "error":
            return {"status": "harness_error", "error": payload}
        result = dict(payload)
        if result["status"] != "ok":
            return result
        kind, payload = self._receive(walk_timeout_s)
        if kind == "walked":
            result.update(payload)
        elif kind == "timeout":
            result.update(status="walk_timeout", error=f"walk exceeded {walk_timeout_s:g} s")
        elif kind == "memory":
            result.update(status="memory_limit", error=f"worker RSS exceeded {self.max_rss_bytes / 2**30:.1f} GiB while walking")
        elif kind == "crash":
            result.update(status="crash", error=f"worker died (exit code {payload}) while walking")
        else:
            result.update(status="harness_error", error=payload)
        return result

    def rss_delta(self, case: dict, *, timeout_s: float) -> int | None:
        """Peak-RSS growth of an untimed compile of ``case`` (:func:`_engines.compile_rss_delta`), or
        None when the worker is unavailable, times out, dies or fails (then restarted as after a case)."""
        if not self.start():
            return None
        self._conn.send(("rss", case))
        kind, payload = self._receive(timeout_s)
        return int(payload) if kind == "rss" else None

    def __enter__(self) -> "EngineWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_vocab(name: str = "tekken") -> int:
    """Compare :func:`token_bytes_table` with :class:`dotvllm_plugin.Vocabulary` (when it exists)."""
    from benchmarks._engines import ours_token_bytes

    table = token_bytes_table(name)
    ours = ours_token_bytes(name)
    diff = [i for i, (a, b) in enumerate(zip(table, ours)) if a != b]
    if len(table) != len(ours):
        diff.append(f"size {len(table)} != {len(ours)}")
    print(f"{name}: {len(table)} ids, {sum(t is not None for t in table)} ordinary; "
          f"{len(diff)} differ from dotvllm_plugin.Vocabulary; first: {diff[:10]}")
    return 1 if diff else 0


if __name__ == "__main__":
    if "--check-vocab" in sys.argv:
        sys.exit(max(check_vocab(n) for n in ("tekken", "mistral32k")))
    print(json.dumps(machine_info(), indent=1))
