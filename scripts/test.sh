#!/usr/bin/env bash
# Install everything the tests need (Debian packages, Python packages, the vcsim
# binary) and run the checks in order: ruff, mypy, pytest. Fails on any failure,
# including "no tests collected".
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

DEBIAN_PACKAGES=(
  qemu-utils ntfs-3g                                  # real NTFS-in-VMDK volumes
  openssh-server openssh-client                       # the ESXi-shell stand-in
  golang-go golang-github-vmware-govmomi-dev          # vcsim, built from Debian's govmomi sources
  restic borgbackup                                   # peers for the benchmarks
  openssl
  systemd                                             # systemd-analyze checks the units `toolkit schedule` writes
  chromium                                            # renders `toolkit report` pages headless
)
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

python3 -m pip install --quiet -e '.[dev]'

bash scripts/lint.sh

# Build vcsim once (cached) so no lab test waits for the compiler.
python3 -c 'from toolkit.lab.vcsim import build_vcsim; print("vcsim:", build_vcsim())'

set +e
python3 -m pytest "$@"
rc=$?
set -e
if [ "$rc" = "5" ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
