#!/bin/busybox sh
# PID 1 of the end-to-end test guest. The base initramfs holds busybox, the
# kernel modules (load order in /etc/tabula/modules), open-iscsi and
# e2fsprogs; run-guest.ts appends this script as /init together with
# /tabula/workload.sh and /tabula/scenario.env. The guest reports on the serial
# console with lines starting "TABULA-E2E" and powers itself off.
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock/iscsi /tmp
ln -sf /proc/mounts /etc/mtab
# iscsid accepts requests only from a peer whose uid resolves to "root".
echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
echo 'root:x:0:' > /etc/group
echo "TABULA-E2E BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)"

# Reached when the workload did not power off by itself.
halt_guest() {
	sync
	poweroff -f
	sleep 5
}

. /tabula/scenario.env
. /tabula/workload.sh

while read -r ko; do
	[ -n "$ko" ] || continue
	insmod "$ko" || fail "insmod $ko failed"
done < /etc/tabula/modules
# Lets the kernel load crypto helpers on demand (request_module) from the image.
echo /sbin/modprobe > /proc/sys/kernel/modprobe

# 10.0.2.0/24 is qemu's user-mode network; the portals are guestfwd addresses in it.
ip link set lo up
ip link set eth0 up || fail "no eth0 (virtio-net not detected)"
ip addr add 10.0.2.15/24 dev eth0

echo "TABULA-E2E STEP ready uptime=$(cut -d' ' -f1 /proc/uptime)"
"workload_$TABULA_WORKLOAD" || fail "workload $TABULA_WORKLOAD returned $?"
echo "TABULA-E2E PASS $TABULA_SCENARIO"
halt_guest
