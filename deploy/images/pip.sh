#!/bin/sh
# pip inside an image build. When deploy/images/wheels/ holds wheels (made on the host by
# deploy/images/download-wheels.sh) it installs offline from them only: reproducible, and no need for the build
# container to see the host's PyPI setup. Otherwise it uses the index as usual.
set -eu
if ls /build/wheels/*.whl >/dev/null 2>&1; then
  set -- "$@" --no-index --find-links /build/wheels
fi
exec /opt/venv/bin/pip --disable-pip-version-check --no-cache-dir "$@"
