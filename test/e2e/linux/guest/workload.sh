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

# After a failover test: stop the writer, check no write failed, verify every
# checksum on the multipath device (caches dropped), fsck it, log out.
finish_failover_io() {
	touch /tmp/io.stop
	wait $io_pid
	[ -e /tmp/io.error ] && { cat /tmp/io.error; fail "a write failed during the test"; }
	echo "I/O: $(io_count) files written and acknowledged"

	step verify
	drop_caches "$MP"
	verify_sums $MNT/tree /tmp/sums "file tree on $MP"
	verify_sums $MNT/io /tmp/io.sums "files written across the failover"
	must "umount $MP" umount $MNT
	step fsck
	must "e2fsck -f -n $MP (filesystem not clean)" timeout 300 /sbin/e2fsck -f -n "$MP"
	step logout
	must "multipathd shutdown" multipathd shutdown
	must "flushing the multipath map" multipath -F
	logout_all
	step done
	return 0
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

# ------------------------------------------------- requests to the host ----
# Scenarios against the controller and agents may ask the host to act (kill or
# restart an agent, take a snapshot, report allocation): one line out on
# /dev/ttyS1, one line back, "OK <text>" or "ERR <reason>" (run-guest.ts).

# host_request VERB [ARG]: sets HOST_REPLY to the text after OK; fails on ERR or silence.
host_request() {
	if [ -z "${HOST_CHANNEL:-}" ]; then
		[ -c /dev/ttyS1 ] || fail "no /dev/ttyS1: the host gave this guest no request channel"
		stty -F /dev/ttyS1 raw -echo || fail "stty on /dev/ttyS1 failed"
		exec 3<>/dev/ttyS1
		HOST_CHANNEL=1
	fi
	echo "host request: $*"
	echo "$*" >&3
	# Restarting an agent (a tsx process on a busy 2-core machine) is the slowest answer.
	IFS= read -r -t 240 reply <&3 || fail "no answer from the host to '$*' within 240 s"
	case $reply in
	OK*) HOST_REPLY=${reply#OK} ; HOST_REPLY=${HOST_REPLY# } ;;
	*) fail "host request '$*' refused: $reply" ;;
	esac
	echo "host answer: $HOST_REPLY"
}

# ------------------------------------------ sessions for the cluster runs ----

# discover_all: SendTargets on every portal must list TABULA_IQN; then one
# node record per portal (the targets report their host loopback addresses).
discover_all() {
	for p in $TABULA_PORTALS; do
		out=$(timeout 60 iscsiadm -m discovery -t sendtargets -p "$p" 2>&1) || {
			echo "$out"
			fail "SendTargets discovery on $p failed"
		}
		echo "$out"
		echo "$out" | grep -q " $TABULA_IQN\$" || fail "SendTargets on $p did not list $TABULA_IQN"
	done
	iscsiadm -m node -o delete >/dev/null 2>&1
	for p in $TABULA_PORTALS; do
		must "creating the node record for $p" iscsiadm -m node -o new -T "$TABULA_IQN" -p "$p"
		configure_node "$p"
	done
}

# disks_of_lun LUN: the /dev/sdX of LUN on every session, one per line.
disks_of_lun() {
	for b in /sys/class/iscsi_session/session*/device/target*/*:*:*:"$1"/block/*; do
		[ -e "$b" ] && [ -b "/dev/$(basename "$b")" ] && echo "/dev/$(basename "$b")"
	done
}

# wait_disks LUN COUNT: prints the LUN's disks once there are COUNT of them (30 s at most).
wait_disks() {
	i=0
	while [ $i -lt 150 ]; do
		d=$(disks_of_lun "$1")
		if [ -n "$d" ] && [ "$(echo "$d" | wc -l)" -ge "$2" ]; then
			echo "$d"
			return 0
		fi
		i=$((i + 1))
		sleep 0.2
	done
	return 1
}

# login_single: iscsid, discovery and login on the first portal; sets DEV to LUN 0's disk.
login_single() {
	set -- $TABULA_PORTALS
	step iscsid
	start_iscsid
	step discovery
	discover "$1"
	configure_node "$1"
	step login
	login "$1"
	DEV=$(wait_disks "$TABULA_LUN" 1) || fail "no block device for LUN $TABULA_LUN after login"
	echo "disk: $DEV"
}

# sysfs_disk /dev/sdX: /sys/block/sdX
sysfs_disk() { echo "/sys/block/$(basename "$1")"; }

# sha256sum -c for a list made by checksum_tree, in DIR (busybox has no -c --quiet).
verify_sums() { # DIR SUMS WHAT
	(cd "$1" && sha256sum -c "$2" > /tmp/verify.out 2>&1) || {
		grep -v ': OK$' /tmp/verify.out | head -20
		fail "$3: checksums differ"
	}
}

# ------------------------------------------------------------ multipath ----

write_multipath_conf() {
	mkdir -p /etc/multipath
	cat > /etc/multipath.conf <<-'CONF'
	defaults {
		# Check every path each 2 s (default 5, backing off to 20 for
		# healthy paths; here at most 4): a failed path is seen, and a path
		# whose session came back reinstated, within seconds.
		polling_interval 2
		max_polling_interval 4
		# Both agents' paths in one group, I/O round-robin over both, so
		# killing either agent is a failover under load.
		path_grouping_policy multibus
		path_checker tur
		# This guest has every disk an iSCSI LUN: multipath them all, with
		# no wwids file to learn from first.
		find_multipaths off
		# Maps named by WWID: the name proves the grouping key.
		user_friendly_names no
		# No udev in this guest, so no ID_SERIAL property: read the WWID
		# from sysfs (VPD 0x83) at once instead of waiting for udev to
		# retrigger the device (which never comes).
		retrigger_tries 0
		# All paths down: queue I/O for 15 checker intervals (about 30 s),
		# then fail it, so a dead cluster ends the test instead of hanging it.
		no_path_retry 15
		# Path errors are reported to multipath by the iSCSI session's
		# replacement_timeout (iscsid.conf), not by FC dev_loss_tmo.
	}
	blacklist {
		devnode "^(ram|loop|fd|md|dm-|sr|scd|st|nbd|vd)[0-9]*"
	}
	CONF
}

# udev_mark_initialized DEV...: multipath only looks at block devices that
# udev has set up (libudev's "is initialized": a database entry in
# /run/udev/data). This guest runs no udev, so write bare entries (no
# properties: the WWID must come from multipath's own read of VPD 0x83 in
# sysfs, see retrigger_tries in multipath.conf).
udev_mark_initialized() {
	mkdir -p /run/udev/data
	for d in "$@"; do
		mm=$(cat "$(sysfs_disk "$d")/dev") || fail "no major:minor for $d"
		printf 'I:%s\n' "$(cut -d' ' -f1 /proc/uptime | tr -d .)0000" > "/run/udev/data/b$mm"
	done
}

# mpath_ll: multipath -ll of the one map.
mpath_ll() { multipath -ll 2>/dev/null; }

# count_paths STATE_REGEX: paths in `multipath -ll` whose status matches.
count_paths() { mpath_ll | grep -E '[0-9]+:[0-9]+:[0-9]+:[0-9]+ sd' | grep -cE "$1"; }

# wait_paths ACTIVE SECONDS: until exactly ACTIVE paths are "active ready".
wait_paths() {
	i=0
	while [ $i -lt $(($2 * 2)) ]; do
		[ "$(count_paths 'active ready')" = "$1" ] && return 0
		i=$((i + 1))
		sleep 0.5
	done
	mpath_ll
	return 1
}

# io_loop DIR: writes 256 KiB files of random data, each fsync'ed, until
# /tmp/io.stop exists; an acknowledged file's checksum goes to /tmp/io.sums
# and the count to /tmp/io.count. A failed write leaves /tmp/io.error.
io_loop() {
	n=0
	mkdir -p "$1"
	while [ ! -e /tmp/io.stop ]; do
		dd if=/dev/urandom of=/tmp/io.chunk bs=64k count=4 2>/dev/null
		s=$(sha256sum < /tmp/io.chunk)
		if ! dd if=/tmp/io.chunk of="$1/f$n" bs=64k conv=fsync 2>/tmp/io.dd; then
			{ echo "write of $1/f$n failed:"; cat /tmp/io.dd; } > /tmp/io.error
			return 1
		fi
		echo "${s%% *}  ./f$n" >> /tmp/io.sums
		n=$((n + 1))
		echo $n > /tmp/io.count
	done
}

io_count() { cat /tmp/io.count 2>/dev/null || echo 0; }

# wait_io_progress FROM MORE SECONDS: until MORE files past FROM are written.
wait_io_progress() {
	i=0
	while [ $i -lt $(($3 * 2)) ]; do
		[ -e /tmp/io.error ] && { cat /tmp/io.error; return 1; }
		[ "$(io_count)" -ge $(($1 + $2)) ] && return 0
		i=$((i + 1))
		sleep 0.5
	done
	return 1
}

# Two agents export the vdisk: dm-multipath groups both sessions by WWID;
# ALUA answers alike on both; one agent is SIGKILLed under I/O, I/O goes on
# through the other, the agent restarts and its path is reinstated.
workload_multipath() {
	set -- $TABULA_PORTALS
	[ $# -eq 2 ] || fail "multipath needs two portals, got: $TABULA_PORTALS"
	victim=${TABULA_KILL_AGENT:-b}
	step iscsid
	# replacement_timeout 5: once a session's connection is lost, its queued
	# and new I/O fail after 5 s (rather than 20, or 120 by default) with a
	# transport error, which is what makes dm-multipath fail the path and
	# resend the I/O on the other one. Lower would fail paths on short hiccups.
	TABULA_REPLACEMENT_TIMEOUT=5
	start_iscsid
	step discovery
	discover_all
	step login
	for p in $TABULA_PORTALS; do login "$p"; done
	disks=$(wait_disks "$TABULA_LUN" 2) || fail "LUN $TABULA_LUN did not appear on both sessions: $(disks_of_lun "$TABULA_LUN" | tr '\n' ' ')"
	set -- $disks
	d1=$1
	d2=$2
	w1=$(cat "$(sysfs_disk "$d1")/device/wwid")
	w2=$(cat "$(sysfs_disk "$d2")/device/wwid")
	echo "paths: $d1 wwid=$w1; $d2 wwid=$w2"
	[ -n "$w1" ] && [ "$w1" = "$w2" ] || fail "the two paths report different WWIDs (VPD 0x83): '$w1' vs '$w2'"
	step alua
	for d in $d1 $d2; do
		echo "== $d"
		sg_vpd -p di "$d" 2>&1 | head -30
		sg_rtpg -d "$d" > "/tmp/rtpg.$(basename "$d")" 2>&1 || {
			cat "/tmp/rtpg.$(basename "$d")"
			fail "REPORT TARGET PORT GROUPS failed on $d"
		}
		cat "/tmp/rtpg.$(basename "$d")"
	done
	cmp -s "/tmp/rtpg.$(basename "$d1")" "/tmp/rtpg.$(basename "$d2")" || fail "REPORT TARGET PORT GROUPS answers differ between $d1 and $d2"
	grep -qi 'active/optimized' "/tmp/rtpg.$(basename "$d1")" || fail "REPORT TARGET PORT GROUPS: no active/optimized group"

	step multipathd
	write_multipath_conf
	udev_mark_initialized "$d1" "$d2"
	# No udev here: libdevmapper makes the /dev/mapper nodes itself.
	export DM_DISABLE_UDEV=1
	multipathd -d -s > /tmp/multipathd.log 2>&1 &
	wait_paths 2 60 || {
		tail -30 /tmp/multipathd.log
		multipath -v3 2>&1 | tail -80
		fail "multipath did not group both paths (2 active) within 60 s"
	}
	mpath_ll
	map=$(dmsetup ls --target multipath | awk 'NR == 1 { print $1 }')
	[ -n "$map" ] || fail "no multipath map"
	[ "$(dmsetup ls --target multipath | wc -l)" = 1 ] || fail "more than one multipath map: $(dmsetup ls --target multipath)"
	[ "$map" = "$w1" ] || [ "$map" = "3${w1#naa.}" ] || echo "note: map name $map, wwid $w1"
	mpath_ll | grep -q "hwhandler='1 alua'" || fail "multipath did not attach the ALUA hardware handler"
	[ "$(mpath_ll | grep -c 'prio=50')" -ge 1 ] || fail "ALUA prio is not 50 (active/optimized)"
	MP=/dev/mapper/$map
	[ -b "$MP" ] || fail "$MP is missing"

	step mkfs
	# nodiscard: the host wrote every segment before boot, so the failover
	# below needs no allocation (see docs/e2e-linux.md); a discard would undo that.
	must "mkfs.ext4 on $MP" timeout 300 /sbin/mke2fs -t ext4 -F -q -E nodiscard "$MP"
	must "mount $MP" mount -t ext4 "$MP" $MNT
	make_tree $MNT/tree || fail "writing the file tree on $MP"
	checksum_tree $MNT/tree > /tmp/sums || fail "checksumming the tree"
	sync

	step io
	rm -f /tmp/io.stop /tmp/io.error /tmp/io.sums /tmp/io.count
	io_loop $MNT/io &
	io_pid=$!
	wait_io_progress 0 5 60 || fail "no I/O progress on $MP with both paths up"

	step kill
	host_request kill-agent "$victim"
	# The session to the dead agent fails its I/O after replacement_timeout;
	# dm-multipath then fails the path ("failed faulty") and resends on the other.
	i=0
	until [ "$(count_paths '^ *[|`]- [0-9:]+ sd[a-z]+ [0-9:]+ +failed')" = 1 ] && [ "$(count_paths 'active ready')" = 1 ]; do
		i=$((i + 1))
		[ $i -ge 120 ] && { mpath_ll; fail "the path to agent $victim was not failed within 60 s"; }
		sleep 0.5
	done
	mpath_ll
	from=$(io_count)
	step failover-io
	wait_io_progress "$from" 10 90 || fail "I/O stalled with one path down (count $(io_count), was $from)"
	echo "I/O with one path down: $(( $(io_count) - from )) files written"

	step restart
	host_request start-agent "$victim"
	wait_paths 2 120 || { tail -30 /tmp/multipathd.log; fail "the path to agent $victim did not come back within 120 s"; }
	mpath_ll
	from=$(io_count)
	wait_io_progress "$from" 5 60 || fail "no I/O progress after the path came back"
	finish_failover_io
}

# --------------------------------------------------------------- fstrim ----

# Thin vdisk: the sd driver picks UNMAP from VPD B2; files written then
# deleted and `fstrim` must give the allocation back (the host reports it).
workload_fstrim() {
	login_single
	sys=$(sysfs_disk "$DEV")
	step discard
	sg_vpd -p lbpv "$DEV" 2>&1 | head -20
	max=$(cat "$sys/queue/discard_max_bytes")
	mode=$(cat "$sys"/device/scsi_disk/*/provisioning_mode)
	gran=$(cat "$sys/queue/discard_granularity")
	echo "discard: max $max bytes, granularity $gran, provisioning_mode $mode"
	[ "$max" -gt 0 ] || fail "$DEV has no discard support (discard_max_bytes 0)"
	[ "$mode" = unmap ] || fail "provisioning_mode is $mode, expected unmap (LBPU in VPD B2)"

	step mkfs
	# mke2fs discards the whole device first: a thin vdisk stays nearly empty.
	must "mkfs.ext4 on $DEV" timeout 300 /sbin/mke2fs -t ext4 -F -q "$DEV"
	must "mount $DEV" mount -t ext4 "$DEV" $MNT
	host_request alloc
	set -- $HOST_REPLY
	a0=$1
	step write
	# 64 MiB of non-zero data (one random MiB repeated: TCG makes urandom slow).
	must "random data" dd if=/dev/urandom of=/tmp/mib bs=1M count=1
	i=0
	while [ $i -lt 64 ]; do
		cat /tmp/mib > "$MNT/f$i" || fail "writing $MNT/f$i"
		i=$((i + 1))
	done
	sync
	host_request alloc
	set -- $HOST_REPLY
	a1=$1
	echo "allocated: after mkfs $a0, after writing 64 MiB $a1"
	[ $((a1 - a0)) -ge $((60 * MIB)) ] || fail "writing 64 MiB allocated only $((a1 - a0)) bytes"
	step trim
	rm -f "$MNT"/f*
	sync
	out=$(fstrim -v $MNT 2>&1) || { echo "$out"; fail "fstrim failed"; }
	echo "$out"
	sync
	host_request alloc
	set -- $HOST_REPLY
	a2=$1
	echo "allocated: after fstrim $a2"
	# UNMAP frees whole 1 MiB segments; ext4 metadata around the files may keep a few.
	[ $((a1 - a2)) -ge $((56 * MIB)) ] || fail "fstrim gave back only $((a1 - a2)) of 64 MiB ($a1 -> $a2)"
	must "umount $DEV" umount $MNT
	step fsck
	must "e2fsck -f -n $DEV (filesystem not clean)" timeout 300 /sbin/e2fsck -f -n "$DEV"
	step logout
	logout_all
	step done
	return 0
}

# ------------------------------------------------------------- snapshot ----

# A snapshot taken while ext4 is mounted (after sync, not frozen): its clone,
# a writable vdisk, mounts with journal replay and holds the synced tree;
# the snapshot itself is exported read-only.
workload_snapshot() {
	login_single
	step mkfs
	must "mkfs.ext4 on $DEV" timeout 300 /sbin/mke2fs -t ext4 -F -q "$DEV"
	must "mount $DEV" mount -t ext4 "$DEV" $MNT
	step tree
	make_tree $MNT/tree || fail "writing the file tree on $DEV"
	checksum_tree $MNT/tree > /tmp/sums || fail "checksumming the tree"
	sync
	step snapshot
	host_request snapshot
	# Changes after the snapshot must not show in it (copy-on-write).
	echo "written after the snapshot" > $MNT/tree/a/f4096 || fail "overwriting a file after the snapshot"
	rm -f $MNT/tree/many/f1
	mkdir $MNT/after-snapshot
	sync
	step rescan
	must "iscsiadm --rescan" iscsiadm -m session --rescan
	snap=$(wait_disks 1 1) || fail "the snapshot (LUN 1) did not appear after the rescan"
	clone=$(wait_disks 2 1) || fail "the clone (LUN 2) did not appear after the rescan"
	echo "snapshot: $snap, clone: $clone"
	[ "$(blockdev --getro "$snap")" = 1 ] || fail "the read-only snapshot $snap is writable for the kernel"
	[ "$(blockdev --getro "$clone")" = 0 ] || fail "the clone $clone is read-only"
	step clone-mount
	mkdir -p /mnt2
	# The snapshot froze a mounted filesystem whose journal may hold
	# committed but not yet checkpointed metadata; ext4 replays it at mount,
	# which needs a writable device: the clone. (The read-only snapshot
	# could only be mounted with -o ro,noload, skipping the replay, and
	# then might miss the last synced metadata.)
	must "mount the clone $clone" mount -t ext4 "$clone" /mnt2
	dmesg | grep -i "$(basename "$clone")" | tail -5
	verify_sums /mnt2/tree /tmp/sums "the clone of the snapshot"
	[ -e /mnt2/tree/many/f1 ] || fail "a file deleted after the snapshot is missing in its clone"
	[ -e /mnt2/after-snapshot ] && fail "a directory made after the snapshot is in its clone"
	must "umount the clone" umount /mnt2
	must "e2fsck -f -n on the clone (filesystem not clean)" timeout 300 /sbin/e2fsck -f -n "$clone"
	step source
	must "umount $DEV" umount $MNT
	must "e2fsck -f -n $DEV (filesystem not clean)" timeout 300 /sbin/e2fsck -f -n "$DEV"
	step logout
	logout_all
	step done
	return 0
}

# ------------------------------------------------------------------ alua ----

# disk_of_portal PORTAL: the /dev/sdX of LUN TABULA_LUN in the session to PORTAL.
disk_of_portal() {
	iscsiadm -m session -P 3 2>/dev/null | awk -v p="$1" -v lun="$TABULA_LUN" '
		/Current Portal:/ { cur = $3 }
		/scsi[0-9]+ Channel [0-9]+ Id [0-9]+ Lun:/ { l = $NF }
		/Attached scsi disk/ { if (index(cur, p) == 1 && l == lun) print "/dev/" $4 }'
}

# login_pair: iscsid, discovery and login on both portals; sets DA and DB to
# LUN TABULA_LUN's disk through the first and the second portal.
login_pair() {
	set -- $TABULA_PORTALS
	[ $# -eq 2 ] || fail "$TABULA_WORKLOAD needs two portals, got: $TABULA_PORTALS"
	pa=$1
	pb=$2
	step iscsid
	start_iscsid
	step discovery
	discover_all
	step login
	login "$pa"
	login "$pb"
	wait_disks "$TABULA_LUN" 2 > /dev/null || fail "LUN $TABULA_LUN did not appear on both sessions: $(disks_of_lun "$TABULA_LUN" | tr '\n' ' ')"
	DA=$(disk_of_portal "$pa")
	DB=$(disk_of_portal "$pb")
	[ -b "$DA" ] && [ -b "$DB" ] && [ "$DA" != "$DB" ] || {
		iscsiadm -m session -P 3
		fail "no distinct disks per portal: '$DA' through $pa, '$DB' through $pb"
	}
	echo "paths: $DA through $pa (agent 1), $DB through $pb (agent 2)"
}

hexdec() { printf '%d' "$1" 2>/dev/null; }

# own_tpg DEV: the path's own target port group (VPD 0x83), as a decimal number.
own_tpg() { hexdec "$(sg_vpd -p di "$1" 2>/dev/null | sed -n 's/^ *Target port group: *\(0x[0-9a-fA-F]*\).*/\1/p' | head -1)"; }

# own_rel_port DEV: the path's relative target port (VPD 0x83), decimal.
own_rel_port() { hexdec "$(sg_vpd -p di "$1" 2>/dev/null | sed -n 's/^ *Relative target port: *\(0x[0-9a-fA-F]*\).*/\1/p' | head -1)"; }

# rtpg_states FILE: "ID STATE" per group of a decoded sg_rtpg answer (ID decimal).
rtpg_states() {
	awk '/target port group id/ { split($0, a, ":"); split(a[2], b, ","); id = b[1]; gsub(/ /, "", id) }
		/asymmetric access state/ { s = $0; sub(/.*\(/, "", s); sub(/\).*/, "", s); print id, s }' "$1" |
		while read -r id s; do echo "$(hexdec "$id") $s"; done
}

# write_alua_multipath_conf: the ALUA set-up a Tabula LUN should get in the
# field: paths grouped by ALUA priority (the optimized agent's group is used,
# the non-optimized one stands by), the alua hardware handler, failback to
# the optimized group as soon as it is back.
write_alua_multipath_conf() {
	mkdir -p /etc/multipath
	cat > /etc/multipath.conf <<-'CONF'
	defaults {
		# See write_multipath_conf for these.
		polling_interval 2
		max_polling_interval 4
		find_multipaths off
		user_friendly_names no
		retrigger_tries 0
		no_path_retry 15
	}
	devices {
		device {
			vendor "TABULA"
			product "VDISK"
			path_grouping_policy group_by_prio
			prio alua
			hardware_handler "1 alua"
			path_checker tur
			failback immediate
		}
	}
	blacklist {
		devnode "^(ram|loop|fd|md|dm-|sr|scd|st|nbd|vd)[0-9]*"
	}
	CONF
}

# path_line DEV: "<group line> :: <path line>" of DEV in multipath -ll.
path_line() {
	mpath_ll | awk -v d="$(basename "$1")" '/prio=/ { g = $0 } $0 ~ (" " d " ") { print g " :: " $0 }'
}

# in_active_group DEV PRIO: DEV is "active ready" in the map's active group of priority PRIO.
in_active_group() {
	l=$(path_line "$1")
	case $l in *"prio=$2 status=active"*"active ready"*) return 0 ;; esac
	return 1
}

# wait_active_group DEV PRIO SECONDS
wait_active_group() {
	i=0
	while [ $i -lt $(($3 * 2)) ]; do
		in_active_group "$1" "$2" && return 0
		i=$((i + 1))
		sleep 0.5
	done
	mpath_ll
	return 1
}

# The vdisk is exported by agent a (optimized) and agent b (--alua
# non-optimized): REPORT TARGET PORT GROUPS on either path lists both groups
# with their states; dm-multipath (prio alua, group_by_prio) sends I/O to
# a's group only; a is SIGKILLed under I/O, b's group takes over with no I/O
# error; a comes back and its group is preferred again.
workload_alua() {
	# See workload_multipath: a lost session fails its I/O after 5 s.
	TABULA_REPLACEMENT_TIMEOUT=5
	login_pair
	step rtpg
	for d in $DA $DB; do
		echo "== sg_vpd -p di $d"
		sg_vpd -p di "$d" 2>&1 | head -30
		echo "== sg_rtpg -d $d"
		sg_rtpg -d "$d" > "/tmp/rtpg.$(basename "$d")" 2>&1 || {
			cat "/tmp/rtpg.$(basename "$d")"
			fail "REPORT TARGET PORT GROUPS failed on $d"
		}
		cat "/tmp/rtpg.$(basename "$d")"
	done
	ra=/tmp/rtpg.$(basename "$DA")
	cmp -s "$ra" "/tmp/rtpg.$(basename "$DB")" || fail "REPORT TARGET PORT GROUPS answers differ between $DA and $DB"
	rtpg_states "$ra" > /tmp/states
	echo "port groups (id state): $(tr '\n' ';' < /tmp/states)"
	[ "$(wc -l < /tmp/states)" = 2 ] || fail "REPORT TARGET PORT GROUPS lists $(wc -l < /tmp/states) groups, expected 2 (one per agent)"
	ga=$(own_tpg "$DA")
	gb=$(own_tpg "$DB")
	echo "own target port group (VPD 0x83): $DA $ga, $DB $gb"
	[ -n "$ga" ] && [ -n "$gb" ] && [ "$ga" != "$gb" ] || fail "the two paths must be in two port groups (VPD 0x83: '$ga', '$gb')"
	grep -q "^$ga active/optimized\$" /tmp/states || fail "group $ga (agent a, $DA) is not active/optimized"
	grep -q "^$gb active/non.optimized\$" /tmp/states || fail "group $gb (agent b, $DB, --alua non-optimized) is not active/non-optimized"

	step multipathd
	write_alua_multipath_conf
	udev_mark_initialized "$DA" "$DB"
	export DM_DISABLE_UDEV=1
	multipathd -d -s > /tmp/multipathd.log 2>&1 &
	wait_paths 2 60 || {
		tail -30 /tmp/multipathd.log
		multipath -v3 2>&1 | tail -80
		fail "multipath did not group both paths (2 active) within 60 s"
	}
	mpath_ll
	mpath_ll | grep -q "hwhandler='1 alua'" || fail "multipath did not attach the ALUA hardware handler"
	# The kernel makes a group active at the first I/O (checked under I/O below).
	case $(path_line "$DA") in *"prio=50 status="*"active ready"*) ;; *) fail "the optimized path $DA is not in a prio 50 group of its own" ;; esac
	case $(path_line "$DB") in *"prio=10 status=enabled"*"active ready"*) ;; *) fail "the non-optimized path $DB is not standing by in a prio 10 group" ;; esac
	map=$(dmsetup ls --target multipath | awk 'NR == 1 { print $1 }')
	[ -n "$map" ] || fail "no multipath map"
	MP=/dev/mapper/$map
	[ -b "$MP" ] || fail "$MP is missing"

	step mkfs
	# nodiscard: see workload_multipath (the host prefilled every segment).
	must "mkfs.ext4 on $MP" timeout 300 /sbin/mke2fs -t ext4 -F -q -E nodiscard "$MP"
	must "mount $MP" mount -t ext4 "$MP" $MNT
	make_tree $MNT/tree || fail "writing the file tree on $MP"
	checksum_tree $MNT/tree > /tmp/sums || fail "checksumming the tree"
	sync
	step io
	rm -f /tmp/io.stop /tmp/io.error /tmp/io.sums /tmp/io.count
	io_loop $MNT/io &
	io_pid=$!
	wait_io_progress 0 5 60 || fail "no I/O progress on $MP"
	wait_active_group "$DA" 50 30 || fail "under I/O, the optimized path $DA is not in the active group (prio 50)"
	case $(path_line "$DB") in *"status=enabled"*) ;; *) fail "under I/O, the non-optimized path's group is not standing by" ;; esac
	mpath_ll

	step kill
	host_request kill-agent a
	i=0
	until in_active_group "$DB" 10 && ! path_line "$DA" | grep -q 'active ready'; do
		i=$((i + 1))
		[ $i -ge 120 ] && { mpath_ll; fail "I/O did not move to the non-optimized group within 60 s"; }
		sleep 0.5
	done
	mpath_ll
	from=$(io_count)
	step failover-io
	wait_io_progress "$from" 10 90 || fail "I/O stalled on the non-optimized path (count $(io_count), was $from)"
	echo "I/O through the non-optimized group: $(( $(io_count) - from )) files written"
	step unavailable
	# Past a's lease (8 s + 1 s margin by default) b reports a's group
	# unavailable. The first RTPG may meet the ASYMMETRIC ACCESS STATE
	# CHANGED unit attention instead, hence the retries.
	i=0
	until sg_rtpg -d "$DB" > /tmp/rtpg.away 2>&1 && rtpg_states /tmp/rtpg.away | grep -q "^$ga unavailable\$"; do
		i=$((i + 1))
		[ $i -ge 60 ] && { cat /tmp/rtpg.away; fail "group $ga of the killed agent a is not reported unavailable through $DB within 60 s"; }
		sleep 1
	done
	echo "== sg_rtpg -d $DB with agent a away"
	cat /tmp/rtpg.away
	rtpg_states /tmp/rtpg.away | grep -q "^$gb active/non.optimized\$" || fail "group $gb (agent b) is no longer active/non-optimized"

	step restart
	host_request start-agent a
	wait_paths 2 120 || { tail -30 /tmp/multipathd.log; fail "the path to agent a did not come back within 120 s"; }
	wait_active_group "$DA" 50 60 || fail "no failback to the optimized group"
	mpath_ll
	from=$(io_count)
	wait_io_progress "$from" 5 60 || fail "no I/O progress after failback"
	finish_failover_io
}

# --------------------------------------------------------------- persist ----

# pr_gen DEV: the PR generation as sg_persist -k prints it (0x...).
pr_gen() { sg_persist -n -i -k "$1" 2>&1 | sed -n 's/.*PR generation=\(0x[0-9a-fA-F]*\).*/\1/p'; }

# pr_show WHAT: READ KEYS and READ RESERVATION through both paths.
pr_show() {
	for d in $DA $DB; do
		echo "== $1: sg_persist -k / -r $d"
		sg_persist -n -i -k "$d" 2>&1
		sg_persist -n -i -r "$d" 2>&1
	done
}

# same_gen WHAT GEN: both paths report PR generation GEN.
same_gen() {
	a=$(pr_gen "$DA")
	b=$(pr_gen "$DB")
	echo "$1: PR generation $a through $DA, $b through $DB"
	[ "$(hexdec "$a")" = "$2" ] && [ "$(hexdec "$b")" = "$2" ] || fail "$1: PR generation must be $2 on both paths ('$a' on $DA, '$b' on $DB)"
}

# write_block DEV: WRITE(10) of LBA 0 (one 512-byte block) through SG_IO; prints sg_raw's report.
write_block() { sg_raw -v -s 512 -i /tmp/blk "$1" 2a 00 00 00 00 00 00 00 01 00 2>&1; }
read_block() { sg_raw -r 512 "$1" 28 00 00 00 00 00 00 00 01 00 2>&1; }

# Persistent reservations through two agents: what one path registers and
# reserves is what the other path reads (same keys, same generation), and
# enforced there: a nexus of the other agent that is not registered gets
# RESERVATION CONFLICT for a WRITE under Write Exclusive - Registrants Only.
workload_persist() {
	login_pair
	must "random block" dd if=/dev/urandom of=/tmp/blk bs=512 count=1
	step pr-clean
	pr_show "before"
	g0=$(hexdec "$(pr_gen "$DA")")
	[ -n "$g0" ] || fail "no PR generation from sg_persist -k $DA"
	same_gen "before" "$g0"
	sg_persist -n -i -k "$DA" 2>&1 | grep -q 'NO registered' || fail "keys registered before the test"

	step pr-register
	must "REGISTER key 0xa1 through $DA" sg_persist -n -o -G -S 0xa1 "$DA"
	must "RESERVE (type 5, WE registrants only) through $DA" sg_persist -n -o -R -K 0xa1 -T 5 "$DA"
	pr_show "after register + reserve through $DA"
	same_gen "register through $DA" $((g0 + 1))
	sg_persist -n -i -k "$DB" 2>&1 | grep -q '0xa1' || fail "key 0xa1 (registered through $DA) not listed through $DB"
	sg_persist -n -i -r "$DB" 2>&1 | grep -q 'Key=0xa1' || fail "the reservation taken through $DA is not reported through $DB"
	sg_persist -n -i -r "$DB" 2>&1 | grep -qi 'registrants only' || fail "reservation type through $DB is not Write Exclusive, registrants only"
	echo "== sg_persist -s (READ FULL STATUS) $DB"
	sg_persist -n -i -s "$DB" > /tmp/full 2>&1
	cat /tmp/full
	# The registration is of $DA's I_T nexus: its target port is agent a's.
	rpa=$(own_rel_port "$DA")
	rps=$(hexdec "$(sed -n 's/^ *Relative port address: *\(0x[0-9a-fA-F]*\).*/\1/p' /tmp/full | head -1)")
	echo "relative target port: $DA $rpa, $DB $(own_rel_port "$DB"), the registration's (READ FULL STATUS through $DB) $rps"
	[ -n "$rpa" ] && [ "$rps" = "$rpa" ] || fail "READ FULL STATUS through $DB gives relative port '$rps' for the registration made through $DA (port '$rpa')"

	step pr-conflict
	out=$(write_block "$DB")
	echo "WRITE through $DB (not registered): $out" | tail -3
	echo "$out" | grep -qi 'reservation conflict' || fail "a WRITE through the unregistered path $DB did not get RESERVATION CONFLICT"
	# The kernel's own write path: the conflict is an I/O error (sd does not retry it).
	dd if=/tmp/blk of="$DB" bs=512 count=1 oflag=direct 2>/tmp/dd.err && fail "a direct write through $DB succeeded under the reservation"
	echo "dd oflag=direct through $DB: $(grep -v records /tmp/dd.err | tail -1)"
	dmesg | grep -i 'reservation conflict' | tail -2
	dmesg | grep -qi 'reservation conflict' || fail "the kernel did not report a reservation conflict for the direct write through $DB"
	out=$(read_block "$DB") || { echo "$out"; fail "a READ through $DB failed under WE registrants only"; }
	out=$(write_block "$DA") || { echo "$out"; fail "a WRITE through the holder $DA failed"; }
	echo "WRITE through the holder $DA: good"

	step pr-second
	must "REGISTER key 0xb2 through $DB" sg_persist -n -o -G -S 0xb2 "$DB"
	same_gen "register through $DB" $((g0 + 2))
	out=$(write_block "$DB") || { echo "$out"; fail "a WRITE through $DB failed once it is registered (registrants only)"; }
	echo "WRITE through $DB once registered: good"

	step pr-release
	must "RELEASE through $DA" sg_persist -n -o -L -K 0xa1 -T 5 "$DA"
	# Releasing a registrants-only reservation raises RESERVATIONS RELEASED
	# on the other registrants' nexuses (SPC-4 5.13.11.2), here b's, from
	# agent a's RELEASE: the next command through b must get it. Nothing
	# else sends commands on these paths (no multipathd here).
	read_block "$DB" > /tmp/ua.out 2>&1
	grep -i 'sense\|attention' /tmp/ua.out | head -3
	grep -qi 'reservations released' /tmp/ua.out || { cat /tmp/ua.out; fail "no RESERVATIONS RELEASED unit attention through $DB after the RELEASE through $DA"; }
	sg_persist -n -i -r "$DB" 2>&1 | grep -qi 'no reservation' || { sg_persist -n -i -r "$DB"; fail "the release through $DA is not seen through $DB"; }
	must "CLEAR through $DB" sg_persist -n -o -C -K 0xb2 "$DB"
	# CLEAR raises RESERVATIONS PREEMPTED on the other registrant's nexus.
	read_block "$DA" > /tmp/ua.out 2>&1
	grep -i 'sense\|attention' /tmp/ua.out | head -3
	grep -qi 'reservations preempted' /tmp/ua.out || { cat /tmp/ua.out; fail "no RESERVATIONS PREEMPTED unit attention through $DA after the CLEAR through $DB"; }
	pr_show "after release through $DA and clear through $DB"
	same_gen "clear" $((g0 + 3))
	sg_persist -n -i -k "$DA" 2>&1 | grep -q 'NO registered' || fail "keys still registered after CLEAR"
	out=$(write_block "$DB") || { echo "$out"; fail "a WRITE through $DB failed after CLEAR"; }
	step logout
	logout_all
	step done
	return 0
}

# -------------------------------------------------------- storage outage ----

# The vdisk's containers are iSCSI LUNs of a storage node (`tabula target`)
# that the agent reaches over the network. ext4 on the vdisk, a writer, and
# the storage node's target SIGKILLed for TABULA_OUTAGE_S seconds and restarted
# (the host does it): the agent holds the I/O and reconnects, so the guest sees
# a stall, never an error: no I/O error in the kernel log, every checksum
# equal, fsck clean.
workload_storage_outage() {
	set -- $TABULA_PORTALS
	portal=$1
	step iscsid
	start_iscsid
	step discovery
	discover "$portal"
	configure_node "$portal"
	step login
	login "$portal"
	dev=$(wait_disk) || fail "no block device for LUN $TABULA_LUN after login"
	echo "disk: $dev"
	# The agent holds writes through the outage (its hold timeout is longer):
	# the SCSI command timeout must outlast that hold, or sd aborts and retries
	# commands the agent is still holding.
	echo 180 > "$(sysfs_disk "$dev")/device/timeout" || fail "setting the SCSI command timeout of $dev"
	step mkfs
	# A thin vdisk: writes during the outage that need a segment allocated
	# wait for the storage node too (see the scenario).
	must "mkfs.ext4 on $dev" timeout 300 /sbin/mke2fs -t ext4 -F -q "$dev"
	must "mount $dev" mount -t ext4 "$dev" $MNT
	make_tree $MNT/tree || fail "writing the file tree on $dev"
	checksum_tree $MNT/tree > /tmp/sums || fail "checksumming the tree"
	sync
	dmesg -c > /dev/null

	step io
	rm -f /tmp/io.stop /tmp/io.error /tmp/io.sums /tmp/io.count
	io_loop $MNT/io &
	io_pid=$!
	wait_io_progress 0 5 60 || fail "no I/O progress on $dev before the outage"

	step outage
	from=$(io_count)
	# Answers once the storage node is back (after the outage).
	host_request storage-outage "${TABULA_OUTAGE_S:-20}"
	step after-outage
	wait_io_progress "$from" 10 180 || fail "no I/O progress after the storage node came back (count $(io_count), was $from)"
	touch /tmp/io.stop
	wait $io_pid
	[ -e /tmp/io.error ] && { cat /tmp/io.error; fail "a write failed across the storage outage"; }
	echo "I/O: $(io_count) files written and acknowledged, $(( $(io_count) - from )) since the outage began"
	if dmesg | grep -iE 'I/O error|blk_update_request|Buffer I/O|EXT4-fs (error|warning)|rejecting I/O' > /tmp/kernel-errors; then
		cat /tmp/kernel-errors | head -20
		fail "the kernel log shows I/O errors from the storage outage"
	fi

	step verify
	drop_caches "$dev"
	verify_sums $MNT/tree /tmp/sums "file tree on $dev"
	verify_sums $MNT/io /tmp/io.sums "files written across the outage"
	must "umount $dev" umount $MNT
	step fsck
	must "e2fsck -f -n $dev (filesystem not clean)" timeout 300 /sbin/e2fsck -f -n "$dev"
	step logout
	logout_all
	step done
	return 0
}

# --------------------------------------------------------- mirror outage ----

# big_size FILE: its size in bytes (0 when it does not exist yet).
big_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# The vdisk has two copies, each on a LUN of its own storage node (two
# failure domains). ext4 on it, a large file written with conv=fsync, and
# storage node TABULA_KILL_NODE SIGKILLed in the middle of it: the agent's
# writes to the dead node's legs fail after its hold, the controller drops
# those legs and the held writes complete on the surviving copy. The guest
# sees a stall at most, never an error: the write completes, no I/O or ext4
# error in the kernel log. Then the node comes back and is resynced, and the
# file's checksum (read from both copies) equals the bytes written; fsck
# clean.
workload_mirror_outage() {
	set -- $TABULA_PORTALS
	portal=$1
	node=${TABULA_KILL_NODE:-1}
	big_mib=${TABULA_BIG_MIB:-200}
	step iscsid
	start_iscsid
	step discovery
	discover "$portal"
	configure_node "$portal"
	step login
	login "$portal"
	dev=$(wait_disk) || fail "no block device for LUN $TABULA_LUN after login"
	echo "disk: $dev"
	# The agent holds the writes to the dead node's legs for its hold time
	# before the controller drops those legs: the SCSI command timeout must
	# outlast that, or sd aborts and retries commands the agent still holds.
	echo 180 > "$(sysfs_disk "$dev")/device/timeout" || fail "setting the SCSI command timeout of $dev"
	step mkfs
	# nodiscard: the vdisk is thick and stays so (a discard would unmap
	# segments and the big write would then allocate them again).
	must "mkfs.ext4 on $dev" timeout 300 /sbin/mke2fs -t ext4 -F -q -E nodiscard "$dev"
	must "mount $dev" mount -t ext4 "$dev" $MNT
	make_tree $MNT/tree || fail "writing the file tree on $dev"
	checksum_tree $MNT/tree > /tmp/sums || fail "checksumming the tree"
	sync
	dmesg -c > /dev/null

	step write
	# Random bytes straight from the generator to the file and, through a
	# fifo, to md5sum: the checksum of what was written, without holding
	# 200 MiB in this 512 MiB guest's memory. (md5, not sha256 as for the
	# tree: under TCG the guest's CPU is what limits this write, and a
	# checksum only has to catch wrong or stale bytes, not an adversary.)
	rm -f /tmp/big.fifo /tmp/big.sum /tmp/big.rc /tmp/big.err
	mkfifo /tmp/big.fifo || fail "mkfifo"
	md5sum < /tmp/big.fifo > /tmp/big.sum &
	sum_pid=$!
	(
		dd if=/dev/urandom bs=1M count="$big_mib" 2>/dev/null | tee /tmp/big.fifo | dd of=$MNT/big bs=1M conv=fsync 2>/tmp/big.err
		echo $? > /tmp/big.rc
	) &
	big_pid=$!
	# Kill the node once a third of the file is in (writeback is under way by
	# then: dirty pages are limited to a fraction of this guest's memory).
	i=0
	while [ "$(big_size $MNT/big)" -lt $((big_mib * MIB / 3)) ]; do
		[ -e /tmp/big.rc ] && fail "the write ended before the outage: $(cat /tmp/big.err)"
		i=$((i + 1))
		[ $i -lt 600 ] || fail "the write made no progress in 300 s ($(big_size $MNT/big) bytes)"
		sleep 0.5
	done
	step kill
	# TABULA_KILL_NODE=none: the same run without the outage (proves the harness).
	if [ "$node" != none ]; then
		echo "write: $(big_size $MNT/big) bytes in when storage node $node is killed"
		host_request kill-storage "$node"
	fi
	step after-kill
	wait $big_pid
	wait $sum_pid
	step written
	rc=$(cat /tmp/big.rc 2>/dev/null)
	[ "$rc" = 0 ] || { cat /tmp/big.err; fail "the write across the storage node's death failed (dd exit ${rc:-none})"; }
	size=$(big_size $MNT/big)
	[ "$size" = $((big_mib * MIB)) ] || fail "$MNT/big has $size bytes, expected $((big_mib * MIB))"
	if dmesg | grep -iE 'I/O error|blk_update_request|Buffer I/O|EXT4-fs (error|warning)|rejecting I/O|Medium Error' > /tmp/kernel-errors; then
		head -20 /tmp/kernel-errors
		fail "the kernel log shows I/O errors from the storage node's death"
	fi
	# The write could only complete on the surviving copy: the controller has
	# failed the dead node's container (the leg it held is gone from the table).
	if [ "$node" != none ]; then
		host_request mirror-state "$node"
		case " $HOST_REPLY " in
		*" node-$node=failed "*) ;;
		*) fail "storage node $node's container is not failed after its death: $HOST_REPLY" ;;
		esac
		# The node comes back: the controller resyncs its stale legs (the
		# segments written while it was away are copied) and adds them back,
		# so the reads below come from both copies again (spread by segment).
		step resync
		host_request resync-storage "$node"
	fi

	step verify
	drop_caches "$dev"
	want=$(cut -d' ' -f1 /tmp/big.sum)
	got=$(md5sum < $MNT/big | cut -d' ' -f1)
	[ -n "$want" ] && [ "$want" = "$got" ] || fail "$MNT/big reads back with md5 $got, written $want"
	echo "big: $size bytes, md5 $got read back after dropping caches"
	verify_sums $MNT/tree /tmp/sums "file tree on $dev"
	must "umount $dev" umount $MNT
	step fsck
	must "e2fsck -f -n $dev (filesystem not clean)" timeout 300 /sbin/e2fsck -f -n "$dev"
	step logout
	logout_all
	step done
	return 0
}
