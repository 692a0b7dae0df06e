# Guest workloads (busybox sh), sourced by /init after /tabula/scenario.env.
# Each workload is a function workload_<name>; it returns 0 on success or
# calls fail, which reports and powers the guest off. Scenario variables:
#   TABULA_SCENARIO  name printed in PASS/FAIL lines
#   TABULA_WORKLOAD  which workload_<name> to run
#   TABULA_PORTALS   space-separated guest-side portals (ADDR:PORT)
#   TABULA_IQN, TABULA_LUN, TABULA_SIZE (bytes, a multiple of 1 MiB)
#   TABULA_CHAP_USER/TABULA_CHAP_SECRET      one-way CHAP (empty: none)
#   TABULA_MUTUAL_USER/TABULA_MUTUAL_SECRET  mutual CHAP (empty: none)
#   TABULA_DISCOVERY_CHAP  1: SendTargets discovery authenticates too
#   TABULA_DIGEST    CRC32C or None (HeaderDigest and DataDigest)
#   TABULA_NEGATIVE_AUTH  1: first prove that wrong credentials are refused

MIB=1048576
MNT=/mnt

now() { cut -d' ' -f1 /proc/uptime; }
step() { echo "TABULA-E2E STEP $1 uptime=$(now)"; }

diagnostics() {
	echo "---- diagnostics ----"
	iscsiadm -m session -P 3 2>&1 | head -80
	echo "---- iscsid log (tail) ----"
	tail -40 /tmp/iscsid.log 2>/dev/null
	echo "---- dmesg (tail) ----"
	dmesg | tail -60
	echo "---- end diagnostics ----"
}

fail() {
	echo "TABULA-E2E FAIL ${TABULA_SCENARIO:-unknown}: $*"
	diagnostics
	halt_guest
}

# must DESCRIPTION CMD...: run CMD, fail with its output when it does not succeed.
must() {
	desc=$1
	shift
	out=$("$@" 2>&1)
	rc=$?
	if [ $rc -ne 0 ]; then
		echo "$out" | tail -20
		fail "$desc (exit $rc)"
	fi
}

# ------------------------------------------------------------ open-iscsi ----

start_iscsid() {
	mkdir -p /etc/iscsi /run/lock/iscsi
	echo "InitiatorName=iqn.2026-11.org.tabula:e2e-guest" > /etc/iscsi/initiatorname.iscsi
	# Short timeouts: a test should fail in seconds, not minutes.
	cat > /etc/iscsi/iscsid.conf <<-CONF
	iscsid.startup = /sbin/iscsid
	node.startup = manual
	node.session.timeo.replacement_timeout = ${TABULA_REPLACEMENT_TIMEOUT:-20}
	node.conn[0].timeo.login_timeout = 15
	node.conn[0].timeo.logout_timeout = 15
	node.conn[0].timeo.noop_out_interval = 5
	node.conn[0].timeo.noop_out_timeout = 10
	node.session.err_timeo.abort_timeout = 15
	node.session.err_timeo.lu_reset_timeout = 30
	node.session.err_timeo.tgt_reset_timeout = 30
	node.session.initial_login_retry_max = 2
	node.session.cmds_max = 128
	node.session.queue_depth = 32
	node.session.iscsi.InitialR2T = No
	node.session.iscsi.ImmediateData = Yes
	node.session.iscsi.FirstBurstLength = 262144
	node.session.iscsi.MaxBurstLength = 16776192
	node.conn[0].iscsi.MaxRecvDataSegmentLength = 262144
	node.conn[0].iscsi.MaxXmitDataSegmentLength = 0
	discovery.sendtargets.iscsi.MaxRecvDataSegmentLength = 32768
	node.session.scan = auto
	CONF
	if [ "${TABULA_DISCOVERY_CHAP:-0}" = 1 ]; then
		cat >> /etc/iscsi/iscsid.conf <<-CONF
		discovery.sendtargets.auth.authmethod = CHAP
		discovery.sendtargets.auth.username = $TABULA_CHAP_USER
		discovery.sendtargets.auth.password = $TABULA_CHAP_SECRET
		CONF
	fi
	# Foreground in the background, so its log is ours to show on failure.
	iscsid -f -d 1 > /tmp/iscsid.log 2>&1 &
	# iscsiadm answers 20 (ISCSI_ERR_ISCSID_NOTCONN) until iscsid listens.
	i=0
	while :; do
		iscsiadm -m session >/dev/null 2>&1
		[ $? -ne 20 ] && break
		i=$((i + 1))
		[ $i -ge 50 ] && fail "iscsid not reachable after 10 s"
		sleep 0.2
	done
}

# discover PORTAL: SendTargets must list TABULA_IQN. The target reports its own
# (host loopback) address, which the guest cannot reach, so the node records it
# creates are replaced by one for the portal we used.
discover() {
	out=$(timeout 60 iscsiadm -m discovery -t sendtargets -p "$1" 2>&1) || {
		echo "$out"
		fail "SendTargets discovery on $1 failed"
	}
	echo "$out"
	echo "$out" | grep -q " $TABULA_IQN\$" || fail "SendTargets on $1 did not list $TABULA_IQN"
	iscsiadm -m node -o delete >/dev/null 2>&1
	must "creating the node record for $1" iscsiadm -m node -o new -T "$TABULA_IQN" -p "$1"
}

node_set() { # PORTAL NAME VALUE
	must "setting $2 on $1" iscsiadm -m node -T "$TABULA_IQN" -p "$1" -o update -n "$2" -v "$3"
}

# configure_node PORTAL [CHAP_SECRET [MUTUAL_SECRET]]: auth and digest settings.
configure_node() {
	p=$1
	secret=${2:-$TABULA_CHAP_SECRET}
	mutual=${3:-$TABULA_MUTUAL_SECRET}
	if [ -n "$TABULA_CHAP_USER" ]; then
		node_set "$p" node.session.auth.authmethod CHAP
		node_set "$p" node.session.auth.username "$TABULA_CHAP_USER"
		node_set "$p" node.session.auth.password "$secret"
		if [ -n "$TABULA_MUTUAL_USER" ]; then
			node_set "$p" node.session.auth.username_in "$TABULA_MUTUAL_USER"
			node_set "$p" node.session.auth.password_in "$mutual"
		fi
	else
		node_set "$p" node.session.auth.authmethod None
	fi
	node_set "$p" 'node.conn[0].iscsi.HeaderDigest' "${TABULA_DIGEST:-None}"
	node_set "$p" 'node.conn[0].iscsi.DataDigest' "${TABULA_DIGEST:-None}"
}

login() {
	out=$(timeout 90 iscsiadm -m node -T "$TABULA_IQN" -p "$1" --login 2>&1) || {
		echo "$out"
		fail "login to $TABULA_IQN on $1 failed"
	}
}

# expect_login_refused PORTAL WHAT: a login that must not succeed.
expect_login_refused() {
	if out=$(timeout 90 iscsiadm -m node -T "$TABULA_IQN" -p "$1" --login 2>&1); then
		iscsiadm -m node -T "$TABULA_IQN" -p "$1" --logout >/dev/null 2>&1
		fail "login with $2 succeeded; it must be refused"
	fi
	echo "refused as expected ($2): $(echo "$out" | tail -1)"
}

logout_all() {
	must "logout from $TABULA_IQN" timeout 60 iscsiadm -m node -T "$TABULA_IQN" --logout
	iscsiadm -m session >/dev/null 2>&1
	rc=$?
	# 21: ISCSI_ERR_NO_OBJS_FOUND, no session left.
	[ $rc -eq 21 ] || fail "sessions remain after logout (iscsiadm -m session exit $rc)"
}

# session_param NAME: the negotiated value from iscsiadm -m session -P 2.
session_param() {
	iscsiadm -m session -P 2 2>/dev/null | sed -n "s/^[[:space:]]*$1: *//p" | head -1
}

# wait_disk: prints /dev/sdX of LUN TABULA_LUN of the (only) session.
wait_disk() {
	i=0
	while [ $i -lt 150 ]; do
		for b in /sys/class/iscsi_session/session*/device/target*/*:*:*:"$TABULA_LUN"/block/*; do
			if [ -e "$b" ]; then
				dev=/dev/$(basename "$b")
				[ -b "$dev" ] && { echo "$dev"; return 0; }
			fi
		done
		i=$((i + 1))
		sleep 0.2
	done
	return 1
}

# ------------------------------------------------------------------ data ----

drop_caches() {
	sync
	[ -n "${1:-}" ] && blockdev --flushbufs "$1"
	echo 3 > /proc/sys/vm/drop_caches
}

# raw_io DEV: random first and last MiB, read back after dropping caches.
raw_io() {
	dev=$1
	size=$(blockdev --getsize64 "$dev") || fail "blockdev --getsize64 $dev"
	[ "$size" = "$TABULA_SIZE" ] || fail "$dev has $size bytes, expected $TABULA_SIZE"
	last=$((size / MIB - 1))
	must "random data" dd if=/dev/urandom of=/tmp/first bs=1M count=1
	must "random data" dd if=/dev/urandom of=/tmp/last bs=1M count=1
	must "write first MiB" dd if=/tmp/first of="$dev" bs=1M count=1 conv=notrunc,fsync
	must "write last MiB" dd if=/tmp/last of="$dev" bs=1M seek=$last count=1 conv=notrunc,fsync
	drop_caches "$dev"
	must "read first MiB" dd if="$dev" of=/tmp/first.back bs=1M count=1
	must "read last MiB" dd if="$dev" of=/tmp/last.back bs=1M skip=$last count=1
	cmp /tmp/first /tmp/first.back || fail "first MiB of $dev reads back different"
	cmp /tmp/last /tmp/last.back || fail "last MiB of $dev reads back different"
	echo "raw: first and last MiB of $dev ($size bytes) read back: $(md5sum < /tmp/first | cut -c1-32) $(md5sum < /tmp/last | cut -c1-32)"
	rm -f /tmp/first /tmp/last /tmp/first.back /tmp/last.back
}

# make_tree DIR: directories and files of awkward sizes, random content.
make_tree() {
	d=$1
	mkdir -p "$d/a/b/c" "$d/empty-dir" "$d/many" || return 1
	: > "$d/empty"
	for s in 1 511 4095 4096 4097 65537 1048576; do
		dd if=/dev/urandom of="$d/a/f$s" bs=$s count=1 2>/dev/null || return 1
	done
	dd if=/dev/urandom of="$d/a/b/c/big" bs=1M count=8 2>/dev/null || return 1
	i=0
	while [ $i -lt 64 ]; do
		dd if=/dev/urandom of="$d/many/f$i" bs=1k count=$((i % 7 + 1)) 2>/dev/null || return 1
		i=$((i + 1))
	done
	ln -s a/f4096 "$d/link"
}

checksum_tree() { # DIR > sums
	(cd "$1" && find . -type f | sort | xargs sha256sum)
}

# filesystem DEV: mkfs.ext4, a file tree with checksums, fsck, remount, verify.
filesystem() {
	dev=$1
	step mkfs
	must "mkfs.ext4 on $dev" timeout 300 /sbin/mke2fs -t ext4 -F -q "$dev"
	must "mount $dev" mount -t ext4 "$dev" $MNT
	step tree
	make_tree $MNT || fail "writing the file tree on $dev"
	checksum_tree $MNT > /tmp/sums || fail "checksumming the tree"
	[ "$(wc -l < /tmp/sums)" -ge 70 ] || fail "tree has only $(wc -l < /tmp/sums) files"
	sync
	must "umount $dev" umount $MNT
	step fsck
	must "e2fsck -f -n $dev (filesystem not clean)" timeout 300 /sbin/e2fsck -f -n "$dev"
	drop_caches "$dev"
	step verify
	must "remount $dev" mount -t ext4 "$dev" $MNT
	checksum_tree $MNT > /tmp/sums.again || fail "checksumming the tree after remount"
	if ! cmp -s /tmp/sums /tmp/sums.again; then
		diff /tmp/sums /tmp/sums.again | head -20
		fail "file tree differs after remount"
	fi
	[ "$(readlink $MNT/link)" = a/f4096 ] || fail "symlink lost after remount"
	must "umount $dev" umount $MNT
	echo "filesystem: $(wc -l < /tmp/sums) files verified after remount"
}

# ------------------------------------------------------------- workloads ----

# One portal: discovery, login (CHAP/mutual CHAP/digests as configured), raw
# I/O, ext4, logout.
workload_basic() {
	set -- $TABULA_PORTALS
	portal=$1
	step iscsid
	start_iscsid
	step discovery
	discover "$portal"
	if [ "${TABULA_NEGATIVE_AUTH:-0}" = 1 ]; then
		step negative-auth
		if [ -n "$TABULA_MUTUAL_USER" ]; then
			configure_node "$portal" "$TABULA_CHAP_SECRET" "wrong-${TABULA_MUTUAL_SECRET}"
			expect_login_refused "$portal" "a wrong target (mutual) secret"
		fi
		if [ -n "$TABULA_CHAP_USER" ]; then
			configure_node "$portal" "wrong-${TABULA_CHAP_SECRET}"
			expect_login_refused "$portal" "a wrong CHAP secret"
			node_set "$portal" node.session.auth.authmethod None
			expect_login_refused "$portal" "no CHAP"
		fi
	fi
	configure_node "$portal"
	step login
	login "$portal"
	hd=$(session_param HeaderDigest)
	dd_=$(session_param DataDigest)
	echo "session: HeaderDigest=$hd DataDigest=$dd_"
	[ "$hd" = "${TABULA_DIGEST:-None}" ] || fail "HeaderDigest negotiated $hd, wanted ${TABULA_DIGEST:-None}"
	[ "$dd_" = "${TABULA_DIGEST:-None}" ] || fail "DataDigest negotiated $dd_, wanted ${TABULA_DIGEST:-None}"
	dev=$(wait_disk) || fail "no block device for LUN $TABULA_LUN after login"
	echo "disk: $dev"
	step raw
	raw_io "$dev"
	filesystem "$dev"
	step logout
	logout_all
	[ -e "$dev" ] && fail "$dev still present after logout"
	step done
	return 0
}
