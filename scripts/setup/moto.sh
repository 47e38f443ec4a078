# Sourced by scripts/test.sh (set -euo pipefail). The AWS KMS emulator for the
# KMS backend's tests: moto's server, pinned, in a venv under ${MOLLY_CACHE}
# (reused when present), started on loopback in the background unless
# something already answers there. Exports MOLLY_KMS_ENDPOINT.
#
# Known emulator defect (moto 5.2.5): Sign with MessageType=DIGEST hashes the
# digest again; RAW is correct. See docs/hsm-bridge.md.
MOLLY_MOTO_VERSION="5.2.5"
MOLLY_MOTO_PORT="${MOLLY_MOTO_PORT:-5055}"
MOLLY_MOTO_VENV="${MOLLY_CACHE:-$HOME/.cache/molly}/moto-${MOLLY_MOTO_VERSION}"
export MOLLY_KMS_ENDPOINT="http://127.0.0.1:${MOLLY_MOTO_PORT}"

molly_moto_up() {
  python3 - "$MOLLY_MOTO_PORT" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

if ! molly_moto_up; then
  if [ ! -x "${MOLLY_MOTO_VENV}/bin/moto_server" ]; then
    echo "moto: installing moto[server]==${MOLLY_MOTO_VERSION} into ${MOLLY_MOTO_VENV}"
    rm -rf "${MOLLY_MOTO_VENV}"
    python3 -m venv "${MOLLY_MOTO_VENV}"
    "${MOLLY_MOTO_VENV}/bin/pip" install -q --disable-pip-version-check "moto[server]==${MOLLY_MOTO_VERSION}"
  fi
  echo "moto: starting on 127.0.0.1:${MOLLY_MOTO_PORT}"
  nohup "${MOLLY_MOTO_VENV}/bin/moto_server" -H 127.0.0.1 -p "${MOLLY_MOTO_PORT}" \
    >"${MOLLY_CACHE:-$HOME/.cache/molly}/moto.log" 2>&1 &
  for _ in $(seq 1 100); do
    molly_moto_up && break
    sleep 0.2
  done
  if ! molly_moto_up; then
    echo "moto: did not come up; see ${MOLLY_CACHE:-$HOME/.cache/molly}/moto.log" >&2
    return 1
  fi
fi
echo "moto: KMS emulator at ${MOLLY_KMS_ENDPOINT}"
