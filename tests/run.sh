#!/usr/bin/env bash
# The whole test suite, with all set-up, on a fresh machine (Rust, Node 20 + npm, Python 3).
# This is the README's test command; .ci/run calls it after the fmt/clippy gates.
set -euo pipefail
cd "$(dirname "$0")/.."

# 0. Debian packages, when missing: systemd for systemd-analyze, which checks the systemd unit
#    (tests/integration/service_install.rs; no systemd needs to run, only the tool is used), and
#    faketime's libfaketime, which steps the daemon's wall clock in
#    tests/integration/delivery_faults.rs.
FAKETIME_LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
if [ "$(uname -s)" = Linux ]; then
  PKGS=""
  command -v systemd-analyze >/dev/null 2>&1 || PKGS="$PKGS systemd"
  [ -e "$FAKETIME_LIB" ] || [ "$(uname -m)" != x86_64 ] || PKGS="$PKGS faketime"
  if [ -n "$PKGS" ]; then
    echo "== apt-get install$PKGS"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    $SUDO apt-get install -y --no-install-recommends $PKGS >/dev/null ||
      { $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends $PKGS >/dev/null; }
  fi
fi

# 1. The Convex functions' npm project (convex-test, and tsx for the HTTP shim the Rust tests use).
if [ ! -d convex/node_modules ] || [ convex/package-lock.json -nt convex/node_modules/.package-lock.json ]; then
  echo "== npm ci (convex/)"
  (cd convex && npm ci --no-audit --no-fund --loglevel=error)
fi

# 2. The Convex functions' own tests and typecheck.
echo "== convex: typecheck + vitest"
(cd convex && npm run --silent typecheck && npx vitest run)

# 3. Real OpenCode for the live end-to-end test (tests/integration/live_opencode.rs): npm
#    opencode-ai@1.18.33 into target/, skipped when already there. Needs the npm registry once.
echo "== opencode 1.18.33 (tests/live/install_opencode.sh)"
tests/live/install_opencode.sh target/opencode-1.18.33 >/dev/null

# 4. The daemon: unit tests, integration tests (real binary, real OpenCode databases, the
#    Convex functions behind the convex-test shim, real OpenCode driven live).
echo "== cargo test"
cargo test --workspace --locked
