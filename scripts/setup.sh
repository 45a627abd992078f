#!/usr/bin/env bash
# Installs what a fresh machine with only Node.js and npm lacks: pnpm, the Debian packages of the local engines
# and servers, and the workspace's npm dependencies. Safe to run again; fast when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
quiet=false
[ "${1:-}" = "--quiet" ] && quiet=true
say() { $quiet || echo "setup: $*"; }

# Debian packages: binary -> package.
declare -A needed=(
  [nats-server]=nats-server [redis-server]=redis-server [flite]=flite [espeak-ng]=espeak-ng
  [pocketsphinx_continuous]=pocketsphinx [sox]=sox [openssl]=openssl [redis-cli]=redis-tools
)
missing=()
for bin in "${!needed[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("${needed[$bin]}")
done
[ -d /usr/share/pocketsphinx/model/en-us/en-us ] || missing+=(pocketsphinx-en-us)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "setup: missing Debian packages: ${missing[*]} — install them as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  # Through env: sudo resets the environment, and debconf would stop to ask without a terminal.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" pocketsphinx-en-us >/dev/null
fi

if ! command -v pnpm >/dev/null 2>&1; then
  echo "setup: installing pnpm"
  # npm's global prefix belongs to root when Node.js came from a system package: sudo then, as for apt-get.
  npm_sudo=""; [ "$(id -u)" -ne 0 ] && [ ! -w "$(npm prefix -g)/lib" ] && command -v sudo >/dev/null 2>&1 && npm_sudo=sudo
  $npm_sudo npm install -g pnpm@10 >/dev/null 2>&1 || { echo "setup: could not install pnpm (npm install -g pnpm@10)" >&2; exit 1; }
fi

# Install npm dependencies when the lockfile changed since the last install.
stamp=node_modules/.voicebot-install-stamp
if [ ! -f "$stamp" ] || [ pnpm-lock.yaml -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  say "installing npm dependencies"
  if [ -n "${CI:-}" ]; then pnpm install --frozen-lockfile --reporter=silent; else pnpm install --reporter=silent; fi
  touch "$stamp"
fi
say "ready"
