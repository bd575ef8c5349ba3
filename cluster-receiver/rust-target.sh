#!/bin/sh
# The Rust target of a static devd-receiver for a container platform's
# architecture: `rust-target.sh "$TARGETARCH"` (the ARG BuildKit and
# buildah set to the architecture of the image being built: amd64, arm64).
# An empty argument means this machine's architecture. Used by
# cluster-receiver/Dockerfile; tests/tests/receiver_image.rs checks it.
set -eu
arch="${1:-}"
if [ -z "$arch" ]; then
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) arch="$(uname -m)" ;;
  esac
fi
case "$arch" in
  amd64) echo x86_64-unknown-linux-musl ;;
  arm64) echo aarch64-unknown-linux-musl ;;
  *)
    echo "rust-target.sh: no Rust target for architecture '$arch' (amd64 and arm64 are built)" >&2
    exit 1
    ;;
esac
