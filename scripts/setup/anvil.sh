# Sourced by scripts/test.sh (set -euo pipefail). Installs anvil (Foundry's
# Ethereum dev node), pinned, from npm into ${MOLLY_CACHE}/node (reused when
# present) and exports MOLLY_ANVIL, the binary's path. It starts nothing: each
# test starts its own anvil on a free loopback port and kills it when done.
MOLLY_ANVIL_VERSION="1.7.1"
MOLLY_NODE_DIR="${MOLLY_CACHE:-$HOME/.cache/molly}/node"
MOLLY_ANVIL_BIN="${MOLLY_NODE_DIR}/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"

molly_anvil_ok() {
  [ -x "${MOLLY_ANVIL_BIN}" ] && "${MOLLY_ANVIL_BIN}" --version 2>/dev/null | grep -q "${MOLLY_ANVIL_VERSION}"
}

if ! molly_anvil_ok; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "anvil: npm is missing; installing nodejs and npm from Debian"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "anvil: installing @foundry-rs/anvil-linux-amd64@${MOLLY_ANVIL_VERSION} into ${MOLLY_NODE_DIR}"
  mkdir -p "${MOLLY_NODE_DIR}"
  [ -e "${MOLLY_NODE_DIR}/package.json" ] || echo '{"private": true}' >"${MOLLY_NODE_DIR}/package.json"
  npm install --prefix "${MOLLY_NODE_DIR}" --no-audit --no-fund --silent \
    "@foundry-rs/anvil-linux-amd64@${MOLLY_ANVIL_VERSION}"
  if ! molly_anvil_ok; then
    echo "anvil: ${MOLLY_ANVIL_BIN} is missing or not version ${MOLLY_ANVIL_VERSION} after npm install" >&2
    return 1
  fi
fi
export MOLLY_ANVIL="${MOLLY_ANVIL_BIN}"
echo "anvil: $("${MOLLY_ANVIL}" --version | head -1) at ${MOLLY_ANVIL}"
