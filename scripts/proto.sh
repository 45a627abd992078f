#!/usr/bin/env bash
# Regenerates libs/proto/src/gen from proto/ with buf + ts-proto (both pinned npm dev dependencies, no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
buf=node_modules/.bin/buf
"$buf" format -w
"$buf" lint
rm -rf libs/proto/src/gen
"$buf" generate
