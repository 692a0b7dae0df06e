/*
 * caw-lock-client: one initiator (libiscsi) taking an ATS-style lock, as
 * VMFS does, for the COMPARE AND WRITE lock system test.
 *
 *   caw-lock-client iscsi://HOST:PORT/IQN/LUN ID ROUNDS LOCK_LBA COUNTER_LBA
 *
 * ID 1..255 names this initiator (and its IQN). Each round: take the lock
 * with COMPARE AND WRITE on LOCK_LBA (all zeros = unlocked -> every byte ID;
 * a miscompare means someone else holds it: try again), then, holding it,
 * READ the counter block (a 64-bit count and an owner marker), check that
 * the marker is 0 (nobody else inside), WRITE count+1 with marker ID, READ it
 * back and check both, WRITE the marker back to 0, and release with COMPARE
 * AND WRITE (ID -> zeros; a miscompare there means the lock was not ours).
 * Commands that fail retryably (UNIT ATTENTION, NOT READY, BUSY) are sent
 * again.
 *
 * With ROUNDS 0 it only reads the counter block: "count=N marker=M".
 * Otherwise it prints "rounds=N violations=V busy=B seconds=S" and exits 0
 * (violations are for the test to judge); 2 when login or a transport fails.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define BLOCK 512

static struct iscsi_context *iscsi;
static int lun;

static int retryable(const struct scsi_task *t) {
	if (t->status == SCSI_STATUS_BUSY || t->status == SCSI_STATUS_TASK_SET_FULL) return 1;
	return t->status == SCSI_STATUS_CHECK_CONDITION &&
	       (t->sense.key == SCSI_SENSE_UNIT_ATTENTION || t->sense.key == SCSI_SENSE_NOT_READY);
}

static void die(const char *what, struct scsi_task *t) {
	if (t == NULL) fprintf(stderr, "%s: %s\n", what, iscsi_get_error(iscsi));
	else fprintf(stderr, "%s: status 0x%02x sense %02x/%04x\n", what, t->status, t->sense.key, t->sense.ascq);
	exit(2);
}

/* COMPARE AND WRITE of one block: 1 written, 0 miscompare. */
static int caw(uint64_t lba, unsigned char *verify_and_write) {
	for (;;) {
		struct scsi_task *t = iscsi_compareandwrite_sync(iscsi, lun, lba, verify_and_write, 2 * BLOCK, BLOCK, 0, 0, 0, 0, 0);
		if (t == NULL) die("COMPARE AND WRITE", t);
		if (t->status == SCSI_STATUS_GOOD) {
			scsi_free_scsi_task(t);
			return 1;
		}
		if (t->status == SCSI_STATUS_CHECK_CONDITION && t->sense.key == SCSI_SENSE_MISCOMPARE) {
			scsi_free_scsi_task(t);
			return 0;
		}
		if (!retryable(t)) die("COMPARE AND WRITE", t);
		scsi_free_scsi_task(t);
	}
}

static void read_block(uint64_t lba, unsigned char *out) {
	for (;;) {
		struct scsi_task *t = iscsi_read16_sync(iscsi, lun, lba, BLOCK, BLOCK, 0, 0, 0, 0, 0);
		if (t == NULL) die("READ", t);
		if (t->status == SCSI_STATUS_GOOD && t->datain.size >= BLOCK) {
			memcpy(out, t->datain.data, BLOCK);
			scsi_free_scsi_task(t);
			return;
		}
		if (!retryable(t)) die("READ", t);
		scsi_free_scsi_task(t);
	}
}

static void write_block(uint64_t lba, unsigned char *data) {
	for (;;) {
		struct scsi_task *t = iscsi_write16_sync(iscsi, lun, lba, data, BLOCK, BLOCK, 0, 0, 0, 0, 0);
		if (t == NULL) die("WRITE", t);
		if (t->status == SCSI_STATUS_GOOD) {
			scsi_free_scsi_task(t);
			return;
		}
		if (!retryable(t)) die("WRITE", t);
		scsi_free_scsi_task(t);
	}
}

static uint64_t count_of(const unsigned char *b) {
	uint64_t v;
	memcpy(&v, b, sizeof v);
	return v;
}

int main(int argc, char **argv) {
	if (argc != 6) {
		fprintf(stderr, "usage: %s iscsi://HOST:PORT/IQN/LUN ID ROUNDS LOCK_LBA COUNTER_LBA\n", argv[0]);
		return 2;
	}
	int id = atoi(argv[2]);
	long rounds = atol(argv[3]);
	uint64_t lock = strtoull(argv[4], NULL, 10);
	uint64_t counter = strtoull(argv[5], NULL, 10);
	if (id < 1 || id > 255 || rounds < 0) {
		fprintf(stderr, "ID must be 1..255 and ROUNDS >= 0\n");
		return 2;
	}
	char name[96];
	snprintf(name, sizeof name, "iqn.2026-11.org.tabula:caw-lock-%d", id);
	iscsi = iscsi_create_context(name);
	if (iscsi == NULL) return 2;
	struct iscsi_url *url = iscsi_parse_full_url(iscsi, argv[1]);
	if (url == NULL) {
		fprintf(stderr, "bad URL %s: %s\n", argv[1], iscsi_get_error(iscsi));
		return 2;
	}
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE);
	iscsi_set_targetname(iscsi, url->target);
	lun = url->lun;
	if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "login to %s failed: %s\n", argv[1], iscsi_get_error(iscsi));
		return 2;
	}
	unsigned char block[BLOCK];
	if (rounds == 0) {
		read_block(counter, block);
		printf("count=%" PRIu64 " marker=%d\n", count_of(block), block[8]);
		return 0;
	}
	unsigned char take[2 * BLOCK], release[2 * BLOCK];
	memset(take, 0, BLOCK); /* unlocked */
	memset(take + BLOCK, id, BLOCK);
	memset(release, id, BLOCK);
	memset(release + BLOCK, 0, BLOCK);
	long violations = 0, busy = 0;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long r = 0; r < rounds; r++) {
		while (!caw(lock, take)) busy++;
		read_block(counter, block);
		uint64_t n = count_of(block);
		if (block[8] != 0) {
			violations++;
			fprintf(stderr, "round %ld: initiator %d holds the lock but marker says %d\n", r, id, block[8]);
		}
		n++;
		memcpy(block, &n, sizeof n);
		block[8] = (unsigned char)id;
		write_block(counter, block);
		read_block(counter, block);
		if (block[8] != id || count_of(block) != n) {
			violations++;
			fprintf(stderr, "round %ld: initiator %d holds the lock but its write was overwritten (marker %d)\n", r, id, block[8]);
		}
		block[8] = 0;
		memcpy(block, &n, sizeof n);
		write_block(counter, block);
		if (!caw(lock, release)) {
			violations++;
			fprintf(stderr, "round %ld: initiator %d releases a lock it does not hold\n", r, id);
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("rounds=%ld violations=%ld busy=%ld seconds=%.3f\n", rounds, violations, busy, s);
	iscsi_logout_sync(iscsi);
	iscsi_destroy_url(url);
	iscsi_destroy_context(iscsi);
	return 0;
}
