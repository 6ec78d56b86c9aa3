#!/usr/bin/env bash
# Installs what `make k8s-check` needs into ./.tools (git-ignored), once and quietly:
# Debian's kubectl (the kubernetes-client package of Debian 12, unpacked there rather than
# installed, so that it displaces no other kubectl), and checkov, kubernetes-validate and
# hadolint at the versions pinned in deploy/k8s-requirements.txt, in a virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=$PWD/.tools
kubectl_package=kubernetes-client=1.20.5+really1.20.2-1.1+deb12u1
if ! "$tools/kubectl/usr/bin/kubectl" version --client >/dev/null 2>&1; then
  printf 'k8s-tools: unpacking Debian'"'"'s %s into %s (once)\n' "$kubectl_package" "$tools/kubectl" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && { apt-get download -qq "$kubectl_package" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get download -qq "$kubectl_package" >/dev/null 2>&1; }; })
  rm -rf "$tools/kubectl"
  mkdir -p "$tools/kubectl"
  dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tools/kubectl"
fi

venv=$tools/k8s-venv
requirements=deploy/k8s-requirements.txt
if ! cmp -s "$requirements" "$venv/.installed"; then
  printf 'k8s-tools: installing %s into %s (once)\n' "$requirements" "$venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >/dev/null
  cp "$requirements" "$venv/.installed"
fi
