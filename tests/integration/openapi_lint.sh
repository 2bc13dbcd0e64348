#!/usr/bin/env bash
#
# openapi_lint.sh - lint api/openapi.yaml with Redocly CLI.
#
# Usage: tests/integration/openapi_lint.sh [BUILD_DIR]     (default: <repo>/build)
#
# Installs a pinned @redocly/cli from the npm registry into BUILD_DIR/npm the first
# time (later runs reuse it), then lints the API description with the rules in
# api/redocly.yaml (the recommended ruleset, warnings raised to errors). Exits
# non-zero on any lint problem, or when the linter cannot be installed or run.
#
# Needs: node >= 18.17 and npm; network access to the npm registry on first run only.

set -euo pipefail

# 1.34.21 depends on @redocly/respect-core@1.34.21, which the registry does not
# serve; 1.34.20 installs cleanly and runs on Node >= 18.17.
REDOCLY_VERSION=1.34.20

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-$ROOT/build}
mkdir -p "$BUILD"
BUILD=$(cd "$BUILD" && pwd)
PREFIX=$BUILD/npm
REDOCLY=$PREFIX/node_modules/.bin/redocly

# Redocly must not phone home: no usage telemetry, no update check.
export REDOCLY_TELEMETRY=off
export REDOCLY_SUPPRESS_UPDATE_NOTICE=true
export NO_UPDATE_NOTIFIER=1
export NPM_CONFIG_UPDATE_NOTIFIER=false

die() {
	echo "openapi_lint: $*" >&2
	exit 1
}

command -v node >/dev/null || die "node is not installed"
command -v npm >/dev/null || die "npm is not installed"
node -e '
	const [maj, min] = process.versions.node.split(".").map(Number);
	process.exit(maj > 18 || (maj === 18 && min >= 17) ? 0 : 1);
' || die "node $(node --version) is too old for @redocly/cli@$REDOCLY_VERSION (needs >= 18.17)"

installed_version() {
	[ -x "$REDOCLY" ] && "$REDOCLY" --version 2>/dev/null || true
}

if [ "$(installed_version)" != "$REDOCLY_VERSION" ]; then
	echo "openapi_lint: installing @redocly/cli@$REDOCLY_VERSION into $PREFIX"
	mkdir -p "$PREFIX"
	# --ignore-scripts: the linter needs no install scripts, so run none.
	npm install --prefix "$PREFIX" --no-audit --no-fund --no-update-notifier \
		--ignore-scripts --loglevel=error "@redocly/cli@$REDOCLY_VERSION" ||
		die "npm install of @redocly/cli@$REDOCLY_VERSION failed"
	[ "$(installed_version)" = "$REDOCLY_VERSION" ] ||
		die "redocly $REDOCLY_VERSION is not runnable after install"
fi

cd "$ROOT"
echo "openapi_lint: redocly $REDOCLY_VERSION lint api/openapi.yaml"
if ! "$REDOCLY" lint --config api/redocly.yaml --format=stylish api/openapi.yaml; then
	die "api/openapi.yaml has lint problems"
fi
echo "openapi_lint: ok"
