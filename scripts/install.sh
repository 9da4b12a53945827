#!/usr/bin/env bash
# The one install path for simrec: system data (apt), the virtualenv, pinned Python
# dependencies, Horovod (built from source against the installed TensorFlow) and the package.
# Used by `make setup`, CI and the container image alike. Idempotent: re-running is cheap.
#   scripts/install.sh [--dev] [--browser] [--no-apt] [--no-horovod] [--deps-only]
# --no-apt: no system packages; --no-horovod: skip the Horovod build (images that only serve);
# --deps-only: the pinned dependencies without simrec itself (a cacheable container layer).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SIMREC_VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
DEV=0; BROWSER=0; APT=1; HOROVOD=1; PROJECT=1
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --browser) BROWSER=1 ;;
    --no-apt) APT=0 ;;
    --no-horovod) HOROVOD=0 ;;
    --deps-only) PROJECT=0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

apt_install() {
  [ "$APT" = 1 ] || { echo "install.sh: --no-apt; skipping system packages: $*" >&2; return 0; }
  # Debian packages: only where apt exists and we may use it (root or passwordless sudo).
  command -v apt-get >/dev/null || { echo "install.sh: no apt-get; skipping system packages: $*" >&2; return 0; }
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "install.sh: not root and no sudo; skipping system packages: $*" >&2; return 0; fi
  fi
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "install.sh: apt-get install ${missing[*]}"
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || echo "install.sh: could not install ${missing[*]}; continuing without" >&2
}

# Fashion-MNIST as a Debian package; simrec falls back to the official URLs where this fails.
apt_install dataset-fashion-mnist
if [ "$BROWSER" = 1 ]; then apt_install chromium chromium-driver; fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "install.sh: creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
STAMP="$VENV/.simrec-deps-$(cat requirements/base.txt requirements/dev.txt requirements/constraints.txt | sha256sum | cut -c1-16)-$DEV"
if [ ! -f "$STAMP" ]; then
  echo "install.sh: installing pinned dependencies (a few minutes on a fresh machine)"
  reqs=(-r requirements/base.txt)
  [ "$DEV" = 1 ] && reqs+=(-r requirements/dev.txt)
  "${PIP[@]}" install "${reqs[@]}" -c requirements/constraints.txt
  touch "$STAMP"
fi

if [ "$HOROVOD" = 1 ] && ! "$VENV/bin/python" -c "import horovod.tensorflow" 2>/dev/null; then
  echo "install.sh: building Horovod 0.28.1 against TensorFlow (2-3 minutes)"
  command -v cmake >/dev/null || "${PIP[@]}" install "cmake<4"
  PATH="$PWD/$VENV/bin:$PATH" HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 MAKEFLAGS=-j"$(nproc)" \
    "${PIP[@]}" install --no-cache-dir --no-build-isolation horovod==0.28.1 -c requirements/constraints.txt
fi

if [ "$PROJECT" = 1 ]; then "${PIP[@]}" install --no-deps -e .; fi
echo "install.sh: done ($VENV)"
