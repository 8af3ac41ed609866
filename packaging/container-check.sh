#!/usr/bin/env bash
# Builds the node's container image and checks that the node in it answers:
# `init` in a volume, the node started with its API published on the host's
# loopback, `/api/v1/status` answered with the admin token, the process
# running as the image's own user, and a clean stop.
#
#   packaging/container-check.sh            # docker with an engine, or podman
#   ENGINE=podman packaging/container-check.sh
#
# It packs a release binary built here (`--target prebuilt` of
# packaging/Dockerfile), so it needs no Rust image. Where the Debian base
# image cannot be pulled (a machine that reaches package mirrors but no
# container registry), it makes one with `debootstrap --variant=minbase
# bookworm` and imports it under the same name.
#
# Podman on a host with hybrid cgroups (crun refuses them) needs runc:
# `apt-get install podman runc`; the script then uses runc. On a sandbox
# without CAP_SYS_RESOURCE, containers keep the host's limits (--ulimit host).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[container-check] %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# The data volume is handed to the image's user (uid 10001) with chown.
[ "$(id -u)" = 0 ] || die "run as root: the check gives its data volume to the image's user (uid 10001) with chown"

ENGINE=${ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null; then
    ENGINE=podman
  else
    die "no container engine: start a Docker engine, or apt-get install podman runc"
  fi
fi
engine=("$ENGINE")
run_flags=()
build_flags=()
if [ "$ENGINE" = podman ]; then
  if command -v runc >/dev/null; then engine+=(--runtime "$(command -v runc)"); fi
  run_flags+=(--ulimit host)
  build_flags+=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)")
fi
say "engine: ${engine[*]}"

base=docker.io/library/debian:bookworm-slim
if ! "${engine[@]}" image inspect "$base" >/dev/null 2>&1; then
  if ! "${engine[@]}" pull "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null ||
      die "cannot pull $base and no debootstrap to make it (apt-get install debootstrap)"
    say "cannot pull $base: making it with debootstrap (about 30 s)"
    root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
    tar -C "$root" -c . | "${engine[@]}" import - "$base" >/dev/null
    rm -rf "$root"
  fi
fi

say "building the release binary"
cargo build --release --locked -p caisse-cli
ctx=$(mktemp -d)
data=$(mktemp -d)
name="caisse-check-$$"
cleanup() {
  "${engine[@]}" rm -f "$name" >/dev/null 2>&1 || true
  rm -rf "$ctx" "$data"
}
trap cleanup EXIT
mkdir -p "$ctx/target/release"
cp target/release/caisse "$ctx/target/release/caisse"
strip "$ctx/target/release/caisse" 2>/dev/null || true

say "building the image"
started=$(date +%s)
"${engine[@]}" build "${build_flags[@]}" -f packaging/Dockerfile --target prebuilt -t caisse:check "$ctx" >/dev/null
size=$("${engine[@]}" image inspect caisse:check --format '{{.Size}}')
say "image caisse:check built in $(($(date +%s) - started)) s, $((size / 1024 / 1024)) MiB"

# The volume belongs to the image's user (uid 10001), as a named volume would.
chown 10001:10001 "$data"
chmod 0700 "$data"
"${engine[@]}" run --rm "${run_flags[@]}" -v "$data:/var/lib/caisse" caisse:check \
  --data-dir /var/lib/caisse/node init --name "Caisse du conteneur" --territory "Essai" \
  --api 0.0.0.0:7300 --listen /ip4/0.0.0.0/tcp/7400 >/dev/null
[ -s "$data/node/admin.token" ] || die "init wrote no admin token"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${engine[@]}" run -d --name "$name" "${run_flags[@]}" -v "$data:/var/lib/caisse" \
  -p "127.0.0.1:$port:7300" caisse:check >/dev/null
token=$(cat "$data/node/admin.token")
status=""
for _ in $(seq 1 60); do
  if status=$(curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/v1/status"); then
    break
  fi
  sleep 0.5
done
[ -n "$status" ] || {
  "${engine[@]}" logs "$name" >&2 || true
  die "the node in the container did not answer on 127.0.0.1:$port"
}
echo "$status" | grep -q '"name":"Caisse du conteneur"' || die "unexpected status: $status"
say "the node answers on 127.0.0.1:$port: $status"
uid=$("${engine[@]}" top "$name" user 2>/dev/null | tail -n 1 | tr -d ' ')
say "node process user: $uid"
[ "$uid" != "root" ] && [ "$uid" != "0" ] || die "the node runs as root"
"${engine[@]}" stop -t 15 "$name" >/dev/null
code=$("${engine[@]}" inspect "$name" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || {
  "${engine[@]}" logs "$name" >&2 || true
  die "the node exited with $code on stop"
}
say "OK: built, answered, stopped cleanly"
