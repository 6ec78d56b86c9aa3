#!/usr/bin/env bash
# `make k8s-check`: renders every overlay of k8s/ (and k8s/restore) with Debian's kubectl, validates every
# object offline (deploy/k8s-validate.py), and scans the rendered manifests and the
# Dockerfile with checkov and hadolint. Silent when all is well but for one line;
# otherwise prints what failed and exits 1. The rendered manifests are left in
# .printworks/k8s/ to read.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/k8s-tools.sh
kubectl=.tools/kubectl/usr/bin/kubectl
venv=.tools/k8s-venv
out=.printworks/k8s
mkdir -p "$out"
rm -f "$out"/*.yaml

rendered=()
for overlay in k8s/overlays/*/ k8s/restore/; do
  name=$(basename "$overlay")
  if ! "$kubectl" kustomize "$overlay" >"$out/$name.yaml" 2>"$out/$name.err"; then
    printf 'k8s-check: kubectl kustomize %s failed:\n' "$overlay" >&2
    cat "$out/$name.err" >&2
    exit 1
  fi
  rendered+=("$out/$name.yaml")
done

"$venv/bin/python" deploy/k8s-validate.py "${rendered[@]}"

scan() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    printf 'k8s-check: %s found problems:\n' "$*" >&2
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}
for f in "${rendered[@]}"; do
  scan "$venv/bin/checkov" --quiet --compact --skip-download --framework kubernetes -f "$f"
done
scan "$venv/bin/checkov" --quiet --compact --skip-download --framework dockerfile -f deploy/Dockerfile
scan "$venv/bin/hadolint" deploy/Dockerfile

objects=$(cat "${rendered[@]}" | grep -c '^kind: ')
printf 'k8s-check: %d kustomizations, %d objects: valid; checkov and hadolint: no failed check\n' \
  "${#rendered[@]}" "$objects"
