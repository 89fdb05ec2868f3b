#!/usr/bin/env bash
# checkov on the Dockerfile, the rendered kustomize overlays and the training job.
#
#   infra/checkov.sh                 # human-readable report; exit code 1 when a check fails
#   infra/checkov.sh -o json         # extra arguments go to checkov
#
# checkov pins old boto3/packaging, so it lives in its own virtual environment, created on demand
# (default .venv-checkov at the repository root; CHECKOV_VENV moves it, CHECKOV_VERSION pins it).
# Skipped checks and their reasons: infra/.checkov.yaml.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHECKOV_VENV:-${root}/.venv-checkov}"
version="${CHECKOV_VERSION:-3.3.30}"
python="${PYTHON:-python3}"

# Reuse the venv only when it really holds this checkov version (a folder copied without its
# site-packages, an interrupted install or another version is rebuilt from scratch: --clear).
if ! "${venv}/bin/python" -c "import sys, checkov.version as v; sys.exit(v.version != sys.argv[1])" \
     "${version}" >/dev/null 2>&1 || [[ ! -x "${venv}/bin/checkov" ]]; then
  echo "infra/checkov.sh: creating ${venv} (checkov==${version}; about 30 s)" >&2
  "${python}" -m venv --clear "${venv}"
  "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==${version}" >&2
fi

kubectl="${KUBECTL:-}"
if [[ -z "${kubectl}" ]]; then
  if [[ -x "${root}/.venv/bin/kubectl" ]]; then kubectl="${root}/.venv/bin/kubectl"; else kubectl="kubectl"; fi
fi

rendered="$(mktemp -d)"
trap 'rm -rf "${rendered}"' EXIT
for overlay in "${root}"/infra/overlays/*/; do
  name="$(basename "${overlay}")"
  "${kubectl}" kustomize "${overlay}" > "${rendered}/overlay-${name}.yaml"
done
"${kubectl}" kustomize "${root}/infra/training" > "${rendered}/training.yaml"
# checkov knows no PyTorchJob: hand it each replica's pod template as the batch Job it amounts to.
"${venv}/bin/python" - "${rendered}/training.yaml" > "${rendered}/training-replicas.yaml" <<'PY'
import sys

import yaml

jobs = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "PyTorchJob":
        meta = doc["metadata"]
        for replica, spec in doc["spec"]["pytorchReplicaSpecs"].items():
            jobs.append({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": f"{meta['name']}-{replica.lower()}",
                             "namespace": meta.get("namespace", "default")},
                "spec": {"template": spec["template"]},
            })
if not jobs:
    sys.exit("infra/checkov.sh: no PyTorchJob in infra/training")
yaml.safe_dump_all(jobs, sys.stdout)
PY

cd "${root}"
exec "${venv}/bin/checkov" --config-file infra/.checkov.yaml --skip-download --compact \
  --file Dockerfile "${rendered}"/*.yaml "$@"
