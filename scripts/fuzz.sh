#!/usr/bin/env bash
# Coverage-guided fuzzing of devd's decoders with libFuzzer on the stable
# toolchain: the same instrumentation cargo-fuzz asks rustc for
# (SanitizerCoverage via `-C passes` and `-C llvm-args`, both stable), minus
# the address sanitizer, which is what needs nightly. The targets live in
# fuzz/, a workspace of its own; their seed corpora in fuzz/corpus/<target>.
#
#   scripts/fuzz.sh build                  build every target
#   scripts/fuzz.sh list                   the targets
#   scripts/fuzz.sh run TARGET [ARGS…]     fuzz one target (libFuzzer ARGS,
#                                          e.g. -max_total_time=3600)
#   scripts/fuzz.sh ci [SECONDS]           every target: replay its seeds,
#                                          then fuzz it SECONDS (default 20)
#
# New inputs go to $CARGO_TARGET_DIR/fuzz/corpus/<target> (the committed
# seeds stay untouched); crashes to $CARGO_TARGET_DIR/fuzz/artifacts/<target>.
# A crash is reproduced by running the target binary on the file, and kept
# as a regression by adding it to fuzz/corpus/<target> with the fix.
cd "$(dirname "$0")/.."
source scripts/lib.sh

triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
bin_dir="$target_dir/$triple/release"
work="$target_dir/fuzz"

targets() { sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^devd-fuzz$'; }

build() {
  say "Building the fuzz targets (libFuzzer, instrumented for coverage, stable toolchain; the first build compiles devd-protocol's and devd-sync's dependencies once more for $triple)"
  need_packages g++
  # An explicit --target keeps these flags off build scripts and proc macros
  # and the instrumented artifacts in their own directory. Not --locked:
  # fuzz/Cargo.lock is the root's, and a dependency devd-protocol or
  # devd-sync gains later is added to it rather than failing the build.
  RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares" \
    cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" \
      --target-dir "$target_dir" --bins
}

# Longest input a target is given: libFuzzer's default (4096 bytes), but
# room in devd.toml for two paths near the 4096-byte path limit.
max_len() {
  case $1 in
    catalog) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

# run TARGET [libFuzzer args…]
run() {
  local t=$1
  shift
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  "$bin_dir/$t" "$work/corpus/$t" "fuzz/corpus/$t" -max_len="$(max_len "$t")" \
    -artifact_prefix="$work/artifacts/$t/" -timeout=10 -rss_limit_mb=2048 "$@"
}

case "${1:-}" in
  build) build ;;
  list) targets ;;
  run)
    [ $# -ge 2 ] || { echo "usage: scripts/fuzz.sh run TARGET [libFuzzer args]" >&2; exit 2; }
    shift
    run "$@"
    ;;
  ci)
    secs=${2:-20}
    build
    mkdir -p "$work"
    for t in $(targets); do
      say "Fuzz target $t: its seed corpus fuzz/corpus/$t, then ${secs} s of fuzzing"
      log="$work/ci-$t.log"
      if ! "$bin_dir/$t" -runs=0 "fuzz/corpus/$t" >"$log" 2>&1 ||
        ! run "$t" -max_total_time="$secs" -print_final_stats=1 >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $t failed: the input is in $work/artifacts/$t (or fuzz/corpus/$t), the log in $log" >&2
        exit 1
      fi
      grep -E '^(Done|stat::peak_rss_mb)' "$log" | tail -n 2
    done
    ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
