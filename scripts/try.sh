#!/usr/bin/env bash
# devd's main job on its embedded default, no cluster: builds devd, makes a
# small git repository with an origin, starts the daemon (which starts an
# embedded receiver on loopback QUIC), edits files, and shows them arrive.
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_packages git gcc libc6-dev
need_rust

say "Building devd (release)"
cargo build --release -p devd --bins
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
devd="$target_dir/release/devd"

demo="${DEVD_DEMO_DIR:-$(mktemp -d /tmp/devd-demo.XXXXXX)}"
export DEVD_HOME="$demo/home"
say "Creating a demo repository in $demo/work (origin: $demo/origin.git)"
git init -q --bare -b main "$demo/origin.git"
git clone -q "$demo/origin.git" "$demo/work" 2>/dev/null
cd "$demo/work"
git config user.email demo@devd.invalid
git config user.name "devd demo"
mkdir -p src
printf 'fn main() {\n    println!("hello");\n}\n' > src/main.rs
printf '#!/bin/sh\necho build\n' > build.sh && chmod +x build.sh
printf 'target/\n*.log\n' > .gitignore
git add -A && git commit -qm "initial" && git push -q origin main && git remote set-head origin -a >/dev/null

say "devd start --wait"
"$devd" start --wait
trap '"$devd" stop >/dev/null 2>&1 || true' EXIT
receiver=$("$devd" status --json | sed -n 's/.*"worktree":"\([^"]*\)".*/\1/p')

say "Editing: a change, a new file in a new directory, an ignored log"
sed -i 's/hello/hello, devd/' src/main.rs
mkdir -p src/net && echo 'pub fn ping() {}' > src/net/mod.rs
echo "noise" > debug.log
sleep 0.5

say "devd status"
"$devd" status

say "The receiver's worktree ($receiver)"
(cd "$receiver" && find . -type f -o -type l | sort)
echo "--- src/main.rs on the receiver:"
cat "$receiver/src/main.rs"
if diff -r --exclude=.git --exclude=debug.log "$demo/work" "$receiver" >/dev/null; then
  say "The receiver matches the laptop (ignored files stay home). Demo files: $demo"
else
  echo "The receiver differs from the laptop:" >&2
  diff -r --exclude=.git --exclude=debug.log "$demo/work" "$receiver" >&2 || true
  exit 1
fi
