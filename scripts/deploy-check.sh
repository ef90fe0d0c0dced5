#!/usr/bin/env bash
# Checks deploy/: every kustomize overlay renders and validates against the Kubernetes schemas
# (offline, strict: an unknown field fails), and the Prometheus rules load and pass their unit
# tests (docs/deploy.md).
#
#   scripts/deploy-check.sh             # check; exit 3 when a tool is missing
#   scripts/deploy-check.sh --install   # install what is missing first (Debian; apt needs root)
#
# Tools: kubectl (its built-in kustomize), kubernetes-validate (PyPI, schemas inside the
# package), promtool (Debian's prometheus package). tests/deploy.rs runs this script: it
# skips on exit 3, unless CI is set, where a missing tool fails.
#
# Settings (environment, all optional):
#   USERSYNC_K8S_VERSION   the Kubernetes version to validate against (default 1.32.0)
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${USERSYNC_K8S_VERSION:-1.32.0}"
# kubernetes-validate's own version (it carries the schemas), and where --install puts it.
VALIDATE_VERSION="1.37.0"
VENV="target/deploy-check/venv"
# The Kubernetes project's package repository for kubectl, when apt knows no kubectl.
KUBECTL_MINOR="v1.32"

say() { echo "deploy-check.sh: $*" >&2; }

install=false
case "${1:-}" in
    --install) install=true ;;
    "") ;;
    *)
        say "unknown argument ${1}; usage: scripts/deploy-check.sh [--install]"
        exit 2
        ;;
esac

validator() {
    if command -v kubernetes-validate >/dev/null 2>&1; then
        command -v kubernetes-validate
    elif [[ -x "$VENV/bin/kubernetes-validate" ]]; then
        echo "$VENV/bin/kubernetes-validate"
    else
        return 1
    fi
}

missing() {
    local tools=()
    command -v kubectl >/dev/null 2>&1 || tools+=(kubectl)
    command -v promtool >/dev/null 2>&1 || tools+=(promtool)
    validator >/dev/null || tools+=(kubernetes-validate)
    echo "${tools[*]}"
}

apt_install() {
    if [[ "$(id -u)" -ne 0 ]]; then
        say "installing $* needs root; run: sudo apt-get install -y $*"
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

install_kubectl() {
    # Debian's own kubernetes-client is too old for this kustomization (kustomize v2); take
    # kubectl from a repository that has a current one: one already configured (Google Cloud
    # SDK's, say), else the Kubernetes project's.
    if [[ "$(apt-cache policy kubectl 2>/dev/null | awk '/Candidate:/ {print $2}')" =~ ^(|\(none\))$ ]]; then
        apt_install ca-certificates curl gpg
        install -d -m 0755 /etc/apt/keyrings
        curl -fsSL "https://pkgs.k8s.io/core:/stable:/$KUBECTL_MINOR/deb/Release.key" |
            gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
        echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/$KUBECTL_MINOR/deb/ /" \
            >/etc/apt/sources.list.d/kubernetes.list
    fi
    apt_install kubectl
}

install_validator() {
    # Debian's Python refuses system-wide pip installs: a virtual environment under target/.
    if ! python3 -m venv --help >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "kubernetes-validate==$VALIDATE_VERSION"
}

absent="$(missing)"
if [[ -n "$absent" ]]; then
    if ! $install; then
        say "missing: $absent (scripts/deploy-check.sh --install installs them)"
        exit 3
    fi
    for tool in $absent; do
        say "installing $tool"
        case "$tool" in
            kubectl) install_kubectl ;;
            promtool) apt_install prometheus ;;
            kubernetes-validate) install_validator ;;
        esac
    done
    absent="$(missing)"
    if [[ -n "$absent" ]]; then
        say "still missing after installing: $absent"
        exit 1
    fi
fi

validate="$(validator)"
# What each overlay renders to, kept for a look after a failure (errors name the file).
mkdir -p target/deploy-check/rendered
overlays=(deploy/overlays/*/)
if [[ ! -d "${overlays[0]}" ]]; then
    say "no overlay under deploy/overlays"
    exit 1
fi
for overlay in "${overlays[@]}"; do
    overlay="${overlay%/}"
    rendered="target/deploy-check/rendered/$(basename "$overlay").yaml"
    say "$overlay: kubectl kustomize | kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
    kubectl kustomize "$overlay" >"$rendered"
    if [[ ! -s "$rendered" ]]; then
        say "$overlay rendered nothing"
        exit 1
    fi
    "$validate" --strict --quiet --kubernetes-version "$K8S_VERSION" "$rendered"
done

say "deploy/monitoring: promtool check rules, promtool test rules"
promtool check rules deploy/monitoring/usersync-rules.yaml
(cd deploy/monitoring && promtool test rules usersync-rules.test.yaml)

say "all checks passed"
