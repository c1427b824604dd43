#!/usr/bin/env bash
# Install what the console's browser test needs, idempotently: Debian's Chromium and
# npm's playwright-core (into $DTSS_NODE, outside the clone; the browser is the
# system's, never a download of Playwright's own).
#
#   scripts/browser.sh        install if missing; prints the node_modules directory
set -euo pipefail
DTSS_NODE=${DTSS_NODE:-$HOME/.cache/dtss/node}
PLAYWRIGHT_VERSION=1.64.1

log() { echo "browser.sh: $*" >&2; }

if ! command -v chromium >/dev/null; then
  log "installing Debian's chromium"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi
if ! command -v node >/dev/null; then
  log "installing Debian's nodejs and npm"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
fi
if [ ! -f "$DTSS_NODE/node_modules/playwright-core/package.json" ]; then
  log "installing playwright-core@$PLAYWRIGHT_VERSION into $DTSS_NODE"
  mkdir -p "$DTSS_NODE"
  (cd "$DTSS_NODE" && [ -f package.json ] || echo '{"private": true}' > "$DTSS_NODE/package.json")
  (cd "$DTSS_NODE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_VERSION" >&2)
fi
echo "$DTSS_NODE/node_modules"
