# Sourced by scripts/test.sh (set -euo pipefail), after anvil.sh. Installs
# solc-js and OpenZeppelin Contracts, pinned, from npm into
# ${MOLLY_CACHE}/node (reused when present), compiles the test contracts in
# chains-eth/testdata/contracts/ into ${MOLLY_CACHE}/eth-contracts/<sha256 of
# the sources and pins> (reused when present) and exports
# MOLLY_ETH_CONTRACTS, the folder of <Contract>.bin / <Contract>.abi.json.
MOLLY_SOLC_VERSION="0.8.30"
MOLLY_OZ_VERSION="5.4.0"
MOLLY_NODE_DIR="${MOLLY_CACHE:-$HOME/.cache/molly}/node"
molly_contracts_src="chains-eth/testdata/contracts"

if [ ! -e "${MOLLY_NODE_DIR}/node_modules/solc/package.json" ] \
  || ! grep -q "\"version\": \"${MOLLY_SOLC_VERSION}\"" "${MOLLY_NODE_DIR}/node_modules/solc/package.json" \
  || ! grep -q "\"version\": \"${MOLLY_OZ_VERSION}\"" "${MOLLY_NODE_DIR}/node_modules/@openzeppelin/contracts/package.json" 2>/dev/null; then
  echo "eth-contracts: installing solc@${MOLLY_SOLC_VERSION} @openzeppelin/contracts@${MOLLY_OZ_VERSION} into ${MOLLY_NODE_DIR}"
  mkdir -p "${MOLLY_NODE_DIR}"
  [ -e "${MOLLY_NODE_DIR}/package.json" ] || echo '{"private": true}' >"${MOLLY_NODE_DIR}/package.json"
  npm install --prefix "${MOLLY_NODE_DIR}" --no-audit --no-fund --silent \
    "solc@${MOLLY_SOLC_VERSION}" "@openzeppelin/contracts@${MOLLY_OZ_VERSION}"
fi
molly_contracts_key="$(cat "${molly_contracts_src}"/*.sol "${molly_contracts_src}/compile.js" \
  | { cat; echo "${MOLLY_SOLC_VERSION} ${MOLLY_OZ_VERSION}"; } | sha256sum | cut -c1-16)"
export MOLLY_ETH_CONTRACTS="${MOLLY_CACHE:-$HOME/.cache/molly}/eth-contracts/${molly_contracts_key}"
if [ ! -e "${MOLLY_ETH_CONTRACTS}/.done" ]; then
  rm -rf "${MOLLY_ETH_CONTRACTS}"
  node "${molly_contracts_src}/compile.js" "${MOLLY_NODE_DIR}/node_modules" "${MOLLY_ETH_CONTRACTS}"
  touch "${MOLLY_ETH_CONTRACTS}/.done"
fi
echo "eth-contracts: ${MOLLY_ETH_CONTRACTS}"
