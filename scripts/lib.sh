# Shared by scripts/*.sh: say what is happening, install what is missing.
set -euo pipefail

say() { printf '\n==> %s\n' "$*"; }

# Install Debian packages that are missing (needs root or sudo).
# `need_packages --no-recommends pkg…` installs only their hard dependencies.
need_packages() {
  local apt_opts=()
  if [ "${1:-}" = "--no-recommends" ]; then
    apt_opts+=(--no-install-recommends)
    shift
  fi
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "Installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_opts[@]}" "${missing[@]}" >/dev/null
}

need_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "devd needs a Rust toolchain (1.95 or newer): install it with rustup (https://rustup.rs), then re-run." >&2
    exit 1
  fi
}
