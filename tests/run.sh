#!/usr/bin/env bash
# The whole test suite, with all set-up, on a fresh machine (Rust, Node 20 + npm, Python 3).
# This is the README's test command; .ci/run calls it after the fmt/clippy gates.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The Convex functions' npm project (convex-test, the HTTP emulator the Rust tests use).
if [ ! -d convex/node_modules ] || [ convex/package-lock.json -nt convex/node_modules/.package-lock.json ]; then
  echo "== npm ci (convex/)"
  (cd convex && npm ci --no-audit --no-fund --loglevel=error)
fi

# 2. The Convex functions' own tests and typecheck.
echo "== convex: typecheck + vitest"
(cd convex && npm run --silent typecheck && npx vitest run)

# 3. The daemon: unit tests, integration tests (real binary, real OpenCode databases, the
#    Convex functions behind the emulator).
echo "== cargo test"
cargo test --workspace --locked
