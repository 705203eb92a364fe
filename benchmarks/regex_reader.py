"""The regex reader in C against the Python one, on the texts a JSON Schema compile parses.

Compiles the first ``--limit`` schemas of the MaskBench sample (``benchmarks.maskbench``: same
corpus, seed and order) with our engine, memo tables emptied before each, and keeps every text
:func:`dotvllm_plugin.regex.fastparse.parse` reads. Checks that both readers give the same tree
for each, then times reading all of them (``time.process_time``, best of ``--repeat``, the two
readers alternating), and the total compile time of the schemas with either reader
(``fastparse.USE_C_PARSE``, alternating per schema, ``--passes`` passes, medians).

Usage::

    python -m benchmarks.regex_reader --corpus ../shared/corpus/jsonschemabench-dev
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import maskbench
from benchmarks._engines import make_engine


def _shape(x):
    import re._parser as P

    if isinstance(x, P.SubPattern):
        return ("SubPattern", x.state.flags, [_shape(i) for i in x.data])
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_shape(i) for i in x])
    return x


def _compile(eng, case) -> bool:
    eng.make_cold()
    try:
        eng.compile("json_schema", case["spec"])
    except Exception:  # noqa: BLE001 - a refused schema parses its texts all the same
        return False
    return True


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(maskbench.CORPUS_DIR))
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args(argv)
    from dotvllm_plugin.regex import fastparse

    if fastparse._cwalk is None:
        raise SystemExit("the C extension is not built")
    cases = maskbench.load_cases(maskbench.parse_args(
        ["--tokenizer", "tekken", "--limit", str(args.limit), "--seed", "0", "--corpus", args.corpus]))
    eng = make_engine("ours", "tekken")
    gc.collect()
    gc.freeze()  # (as MaskBench's workers do after their warm-up)

    texts: list[str] = []
    real = fastparse.parse

    def keep(text):
        texts.append(text)
        return real(text)

    fastparse.parse = keep
    try:
        ok = sum(_compile(eng, case) for case in cases)
    finally:
        fastparse.parse = real
    print(f"{len(cases)} schemas ({ok} compiled): {len(texts)} texts read ({len(set(texts))} distinct, "
          f"{sum(map(len, texts)) / 1e6:.2f} M characters)")

    python_reader = fastparse._Parser
    c_reader = fastparse._cwalk.regex_parse

    def read_py(text):
        try:
            return python_reader(text).run()
        except Exception:  # noqa: BLE001 - outside the subset: None, as fast_parse says
            return None

    for text in texts:  # correctness before timing
        a, b = read_py(text), c_reader(text)
        if (a is None) != (b is None) or (a is not None and _shape(a) != _shape(b)):
            raise SystemExit(f"the readers differ on {text[:200]!r}")
    print(f"both readers agree on every text ({sum(read_py(t) is None for t in set(texts))} distinct left to re)")

    best = {"python": float("inf"), "c": float("inf")}
    for _ in range(args.repeat):
        for name, read in (("python", read_py), ("c", c_reader)):
            t0 = time.process_time()
            for text in texts:
                read(text)
            best[name] = min(best[name], time.process_time() - t0)
    print(f"reading all texts, best of {args.repeat}: Python {best['python'] * 1e3:.1f} ms, "
          f"C {best['c'] * 1e3:.1f} ms: {best['python'] / best['c']:.2f}x")

    totals: dict[bool, list[float]] = {False: [], True: []}
    for k in range(args.passes):
        pass_total = {False: 0.0, True: 0.0}
        for j, case in enumerate(cases):
            for flag in ((False, True) if (j + k) % 2 == 0 else (True, False)):
                fastparse.USE_C_PARSE = flag
                t0 = time.process_time()
                _compile(eng, case)
                pass_total[flag] += time.process_time() - t0
        fastparse.USE_C_PARSE = True
        for flag in pass_total:
            totals[flag].append(pass_total[flag])
        print(f"pass {k + 1}: compile total Python reader {pass_total[False] * 1e3:.0f} ms, "
              f"C reader {pass_total[True] * 1e3:.0f} ms")
    a, b = statistics.median(totals[False]), statistics.median(totals[True])
    print(f"compile total over {len(cases)} schemas, median of {args.passes} passes: Python reader {a * 1e3:.0f} ms, "
          f"C reader {b * 1e3:.0f} ms ({(b - a) / a * 100:+.1f} %)")


if __name__ == "__main__":
    main()
