#!/usr/bin/env bash
# Installs the real OpenCode CLI (npm `opencode-ai@VERSION`, default 1.18.33) into DIR and prints
# the absolute path of its native binary as the last line of stdout. Skips npm entirely when DIR
# already holds a working binary of that version (tests/run.sh runs this before `cargo test`, and
# the live test runs it again: the second call costs one `opencode --version`).
#
#   tests/live/install_opencode.sh target/opencode-1.18.33
#
# `opencode-ai` is a thin wrapper whose optionalDependencies carry the native binaries
# (opencode-linux-x64, opencode-linux-x64-baseline, …). Its postinstall only copies one of them to
# bin/opencode.exe after running `opencode --version` with the real $HOME, which creates
# ~/.config/opencode, ~/.cache/opencode and ~/.local/{share,state}/opencode. So install scripts
# are skipped (--ignore-scripts), and the platform package's bin/opencode is used directly; the
# check below runs `--version` in a throwaway home. Exits non-zero when no working binary of
# VERSION can be had.
set -euo pipefail
DIR=${1:?usage: install_opencode.sh DIR [VERSION]}
VER=${2:-1.18.33}
mkdir -p "$DIR"
cd "$DIR"

case "$(uname -m)" in
  x86_64|amd64) ARCH=x64 ;;
  aarch64|arm64) ARCH=arm64 ;;
  *) echo "unsupported arch $(uname -m)" >&2; exit 2 ;;
esac
LIBC=""
if ldd --version 2>&1 | grep -qi musl; then LIBC="-musl"; fi
PLAT="opencode-linux-${ARCH}${LIBC}"
CANDIDATES=("node_modules/${PLAT}/bin/opencode"
            "node_modules/opencode-linux-${ARCH}-baseline${LIBC}/bin/opencode"
            "node_modules/opencode-ai/bin/opencode.exe")

# `opencode --version` creates config, cache and data directories under $HOME / $XDG_*: run it
# in a throwaway home so that nothing of the user's is touched.
VHOME="$PWD/.version-home"
trap 'rm -rf "$VHOME"' EXIT
oc_version() {
  rm -rf "$VHOME" && mkdir -p "$VHOME"
  timeout 60 env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$VHOME" XDG_DATA_HOME="$VHOME/data" \
    XDG_CONFIG_HOME="$VHOME/config" XDG_CACHE_HOME="$VHOME/cache" XDG_STATE_HOME="$VHOME/state" \
    TMPDIR="$VHOME" OPENCODE_DISABLE_AUTOUPDATE=1 OPENCODE_DISABLE_MODELS_FETCH=1 "$1" --version 2>/dev/null
}

# Prints the first candidate that runs and reports exactly VER.
find_bin() {
  local c v
  for c in "${CANDIDATES[@]}"; do
    if [ -x "$c" ]; then
      v=$(oc_version "$c" || true)
      if [ "$v" = "$VER" ]; then
        echo "$PWD/$c"
        return 0
      fi
    fi
  done
  return 1
}

if BIN=$(find_bin); then
  echo "opencode $VER already installed: $BIN" >&2
  echo "$BIN"
  exit 0
fi

echo "installing opencode-ai@${VER} into $PWD" >&2
[ -f package.json ] || echo '{"name":"opencode-telemetry-live-test","private":true}' > package.json
if ! timeout 600 npm install --no-audit --no-fund --ignore-scripts --loglevel=error "opencode-ai@${VER}" >&2; then
  echo "npm install opencode-ai@${VER} failed; installing ${PLAT}@${VER} directly" >&2
  timeout 600 npm install --no-audit --no-fund --ignore-scripts --loglevel=error "${PLAT}@${VER}" >&2
fi
if [ ! -x "node_modules/${PLAT}/bin/opencode" ]; then
  # The optional dependency was not pulled in (e.g. npm configured with --omit=optional).
  timeout 600 npm install --no-audit --no-fund --ignore-scripts --loglevel=error "${PLAT}@${VER}" >&2 || true
fi

if BIN=$(find_bin); then
  echo "opencode $VER ok: $BIN" >&2
  echo "$BIN"
  exit 0
fi
echo "no working opencode $VER binary under $PWD/node_modules" >&2
exit 1
