#!/usr/bin/env bash
# What the test suite left behind. scripts/test.sh runs the suite with
# TMPDIR set to a directory of its own (/tmp/devd-suite-XXXXXX): every
# test's and benchmark's files, container storage and podman run state
# live below it, so whatever still refers to it was started by the suite.
#
#   scripts/leaks.sh snapshot FILE        record the machine's own podman
#                                         containers, pods and buildah
#                                         working containers (before the suite)
#   scripts/leaks.sh check SUITE_DIR FILE list what the suite left; exit 1
#                                         if anything
#
# "Left" is: a process whose command line names SUITE_DIR (a container's
# conmon, a daemon, a registry); a mount below SUITE_DIR (a container's or
# a working container's layers); a container, pod or working container
# in a storage still under SUITE_DIR; and in the machine's default storage
# a container, pod or working container that was not there before the
# suite and carries devd's labels or a devd- name (a test that forgot its
# private storage).
set -euo pipefail

default_storage() {
  # One line per container / pod / working container: "kind id name".
  podman ps -a --format '{{.ID}} {{.Names}} {{.Labels}}' 2>/dev/null | sed 's/^/container /' || true
  podman pod ps --format '{{.ID}} {{.Name}} {{.Labels}}' 2>/dev/null | sed 's/^/pod /' || true
  buildah containers --noheading --format '{{.ContainerID}} {{.ContainerName}}' 2>/dev/null | sed 's/^/working-container /' || true
}

case "${1:-}" in
  snapshot)
    default_storage | awk '{print $1, $2}' > "$2"
    exit 0
    ;;
  check) suite=$2 before=$3 ;;
  *) echo "usage: $0 snapshot FILE | check SUITE_DIR FILE" >&2; exit 2 ;;
esac

left=()

# Processes naming the suite's directory (not this script or its parents).
me=$$
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$pid" = "$me" ] && continue
  [ "$pid" = "$PPID" ] && continue
  cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  case "$cmd" in
    *"$suite"*)
      case "$cmd" in
        *scripts/leaks.sh*) continue ;;
      esac
      name=$(sed -n 's/.* -n \([^ ]*\) .*/\1/p' <<<"$cmd")
      if [ -n "$name" ] && [[ "$cmd" == *conmon* ]]; then
        left+=("container $name (conmon pid $pid)")
      else
        left+=("process $pid: ${cmd:0:200}")
      fi
      ;;
  esac
done

# Mounts below the suite's directory.
while read -r mnt; do
  left+=("mount $mnt")
done < <(awk -v d="$suite/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo)

# Storages of tests that kept their directory.
while read -r conf; do
  dir=$(dirname "$conf")
  cconf="$dir/containers.conf"
  envs=(CONTAINERS_STORAGE_CONF="$conf")
  [ -f "$cconf" ] && envs+=(CONTAINERS_CONF="$cconf")
  while read -r line; do
    [ -n "$line" ] && left+=("$line (storage $dir)")
  done < <(env "${envs[@]}" bash -c "$(declare -f default_storage); default_storage" | awk '{print $1, $2, $3}')
done < <(find "$suite" -name storage.conf -type f 2>/dev/null)

# New devd things in the machine's default storage.
while read -r kind id name labels; do
  grep -qx "$kind $id" "$before" 2>/dev/null && continue
  if [[ "$name" == devd-* || "$labels" == *dev.devd.* ]]; then
    left+=("$kind $name ($id, default storage)")
  fi
done < <(default_storage)

if [ ${#left[@]} -gt 0 ]; then
  echo "The test suite left these behind (started under $suite):" >&2
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
echo "Nothing left behind: no container, pod, working container, mount or process of the suite."
