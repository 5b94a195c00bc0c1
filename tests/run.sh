#!/usr/bin/env bash
# The whole test suite, with all set-up, on a fresh machine (Rust, Node 20 + npm, Python 3).
# This is the README's test command; .ci/run calls it after the fmt/clippy gates.
set -euo pipefail
cd "$(dirname "$0")/.."

# 0. systemd-analyze, which checks the systemd unit (tests/integration/service_install.rs):
#    Debian's systemd package when it is missing (no systemd needs to run; only the tool is used).
if [ "$(uname -s)" = Linux ] && ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "== apt-get install systemd (for systemd-analyze)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends systemd >/dev/null ||
    { $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends systemd >/dev/null; }
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
