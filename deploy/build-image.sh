#!/usr/bin/env bash
# Builds the keyfed image FROM scratch: the four binaries are built on the
# host as static gnu executables (no registry, no base image needed), then
# copied into a small build context with the few files a scratch root needs.
#
#   deploy/build-image.sh [TAG]          default tag: keyfed:dev
#
# Environment:
#   KEYFED_STATIC_TARGET_DIR  cargo target dir for the static build
#                             (default: <repo>/target/static, kept apart so the
#                             +crt-static flags never invalidate the normal build)
#   KEYFED_IMAGE_PROFILE      cargo profile (default: release)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-keyfed:dev}
target_dir=${KEYFED_STATIC_TARGET_DIR:-$root/target/static}
profile=${KEYFED_IMAGE_PROFILE:-release}
triple=x86_64-unknown-linux-gnu
bins=(keyfed keyfed-gus keyfedctl keyfed-agent)

t0=$(date +%s)
echo "build-image: cargo build --profile $profile --target $triple (static) into $target_dir" >&2
# --target keeps RUSTFLAGS off build scripts and proc macros, which must stay dynamic
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$target_dir" \
    cargo build --locked --profile "$profile" --target "$triple" \
    --manifest-path "$root/Cargo.toml" \
    -p keyfed-node -p keyfed-gus -p keyfedctl -p keyfed-agent
t1=$(date +%s)

out_dir=$target_dir/$triple/$([ "$profile" = dev ] && echo debug || echo "$profile")
ctx=$(mktemp -d "${TMPDIR:-/tmp}/keyfed-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/data" "$ctx/vendor" "$ctx/pki"
chmod 1777 "$ctx/rootfs/tmp"
for b in "${bins[@]}"; do
    src=$out_dir/$b
    # a dynamic binary would fail at start in an empty root: refuse it here
    if readelf -l "$src" 2>/dev/null | grep -q 'program interpreter'; then
        echo "build-image: $src is dynamically linked; expected a static build" >&2
        exit 1
    fi
    if command -v strip >/dev/null; then
        strip -o "$ctx/rootfs/usr/local/bin/$b" "$src"
    else
        cp "$src" "$ctx/rootfs/usr/local/bin/$b"
    fi
    chmod 0755 "$ctx/rootfs/usr/local/bin/$b"
done
cat > "$ctx/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/:/nonexistent
keyfed:x:10001:10001:keyfed:/data:/nonexistent
PASSWD
cat > "$ctx/rootfs/etc/group" <<'GROUP'
root:x:0:
keyfed:x:10001:
GROUP
# static glibc resolves names from /etc/hosts, then DNS (Docker's resolver
# for compose service names); Docker mounts both files into every container
echo 'hosts: files dns' > "$ctx/rootfs/etc/nsswitch.conf"
cp "$root/deploy/Dockerfile" "$ctx/Dockerfile"

docker build --quiet --label "org.opencontainers.image.revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "$tag" "$ctx" >/dev/null
t2=$(date +%s)
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "build-image: $tag built (cargo $((t1 - t0)) s, docker build $((t2 - t1)) s, image $((size / 1024 / 1024)) MiB)" >&2
