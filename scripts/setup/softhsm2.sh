# Sourced by scripts/test.sh (set -euo pipefail). Installs SoftHSM2 from
# Debian if missing and tells the tests where its PKCS#11 module is. The tests
# create their own token in a temporary directory (SOFTHSM2_CONF), so nothing
# here touches a real token store.
if ! command -v softhsm2-util >/dev/null 2>&1 || [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
  echo "softhsm2: installing from Debian"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq softhsm2 >/dev/null
fi
export MOLLY_SOFTHSM_MODULE="${MOLLY_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
echo "softhsm2: $(softhsm2-util --version) module ${MOLLY_SOFTHSM_MODULE}"
