#!/usr/bin/env bash
# Checks the unit files with `systemd-analyze verify` (syntax, directives, dependencies).
# verify also requires each ExecStart binary to exist; so that the check runs before anything is
# installed, the copies checked here start /usr/bin/env instead of /usr/local/bin/flagella-*.
# Skips, saying so, where systemd-analyze is not installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v systemd-analyze >/dev/null; then
  echo "SKIPPED: systemd-analyze is not installed (Debian: apt-get install systemd)"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for unit in flagella-dataplane.service flagella-control.service flagella-dataplane-uninstall.service; do
  sed 's#/usr/local/bin/flagella-[a-z]*#/usr/bin/env#' "$here/$unit" >"$tmp/$unit"
done
(cd "$tmp" && systemd-analyze verify --man=no ./flagella-dataplane.service ./flagella-control.service \
  ./flagella-dataplane-uninstall.service)
echo "systemd units: ok"
