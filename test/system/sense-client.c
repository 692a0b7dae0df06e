/*
 * sense-client: a real initiator (libiscsi) for the fault-sense system test.
 * Logs in to an iscsi:// URL and runs READ(10)/WRITE(10) commands in turn,
 * printing for each the status and the sense exactly as libiscsi received it,
 * so the test compares what the controller chose with what an initiator sees.
 *
 *   sense-client iscsi://HOST:PORT/IQN/LUN OP...
 *   OP: r:LBA:BLOCKS | w:LBA:BLOCKS   (writes 0xa5 bytes; 512-byte blocks)
 *
 * One line per OP: "r LBA BLOCKS GOOD", or
 * "w LBA BLOCKS CHECK KK/AA/QQ info=N" (info=- without a valid INFORMATION
 * field), or "r LBA BLOCKS STATUS 0xNN". Exit 0 when every OP ran (whatever
 * its status), 2 when login or a transport failed.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define BLOCK 512

/* INFORMATION from the raw sense (datain holds the 2-byte length, then the sense): -1 when not valid. */
static int64_t information(const struct scsi_task *task) {
	const unsigned char *s = task->datain.data;
	int len = task->datain.size - 2;
	if (s == NULL || len < 8) return -1;
	s += 2;
	int code = s[0] & 0x7f;
	if ((code == 0x70 || code == 0x71) && (s[0] & 0x80) && len >= 7)
		return ((int64_t)s[3] << 24) | (s[4] << 16) | (s[5] << 8) | s[6];
	if (code == 0x72 || code == 0x73) {
		for (int off = 8; off + 12 <= len && off < 8 + s[7]; off += 2 + s[off + 1]) {
			if (s[off] == 0x00 && (s[off + 2] & 0x80)) {
				int64_t v = 0;
				for (int i = 4; i < 12; i++) v = (v << 8) | s[off + i];
				return v;
			}
		}
	}
	return -1;
}

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: %s iscsi://HOST:PORT/IQN/LUN r|w:LBA:BLOCKS...\n", argv[0]);
		return 2;
	}
	struct iscsi_context *iscsi = iscsi_create_context("iqn.2026-11.org.tabula:sense-client");
	if (iscsi == NULL) return 2;
	struct iscsi_url *url = iscsi_parse_full_url(iscsi, argv[1]);
	if (url == NULL) {
		fprintf(stderr, "bad URL %s: %s\n", argv[1], iscsi_get_error(iscsi));
		return 2;
	}
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE);
	iscsi_set_targetname(iscsi, url->target);
	/* Logs in and clears the power-on UNIT ATTENTION with TEST UNIT READY. */
	if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "login to %s failed: %s\n", argv[1], iscsi_get_error(iscsi));
		return 2;
	}
	for (int i = 2; i < argc; i++) {
		char op;
		unsigned lba, blocks;
		if (sscanf(argv[i], "%c:%u:%u", &op, &lba, &blocks) != 3 || (op != 'r' && op != 'w') || blocks == 0) {
			fprintf(stderr, "bad operation %s\n", argv[i]);
			return 2;
		}
		struct scsi_task *task = NULL;
		/* A UNIT ATTENTION (e.g. capacity changed) is not the answer under test: once more. */
		for (int tries = 0; tries < 3; tries++) {
			if (task != NULL) scsi_free_scsi_task(task);
			if (op == 'r') {
				task = iscsi_read10_sync(iscsi, url->lun, lba, blocks * BLOCK, BLOCK, 0, 0, 0, 0, 0);
			} else {
				unsigned char *data = malloc(blocks * BLOCK);
				memset(data, 0xa5, blocks * BLOCK);
				task = iscsi_write10_sync(iscsi, url->lun, lba, data, blocks * BLOCK, BLOCK, 0, 0, 0, 0, 0);
				free(data);
			}
			if (task == NULL || task->status != SCSI_STATUS_CHECK_CONDITION || task->sense.key != SCSI_SENSE_UNIT_ATTENTION) break;
		}
		if (task == NULL) {
			fprintf(stderr, "%s: %s\n", argv[i], iscsi_get_error(iscsi));
			return 2;
		}
		printf("%c %u %u ", op, lba, blocks);
		if (task->status == SCSI_STATUS_GOOD) {
			printf("GOOD\n");
		} else if (task->status == SCSI_STATUS_CHECK_CONDITION) {
			int64_t info = information(task);
			printf("CHECK %02x/%02x/%02x info=", task->sense.key, (task->sense.ascq >> 8) & 0xff, task->sense.ascq & 0xff);
			if (info < 0) printf("-\n");
			else printf("%" PRId64 "\n", info);
		} else {
			printf("STATUS 0x%02x\n", task->status);
		}
		fflush(stdout);
		scsi_free_scsi_task(task);
	}
	iscsi_logout_sync(iscsi);
	iscsi_destroy_url(url);
	iscsi_destroy_context(iscsi);
	return 0;
}
