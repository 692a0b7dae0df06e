/*
 * durability-writer: a real initiator (libiscsi, asynchronous) for the thin
 * durability system test. It writes self-describing blocks at depth and
 * logs every command's issue and outcome in event order, so that the test
 * knows which blocks were reported GOOD and which of them a completed
 * SYNCHRONIZE CACHE, or FUA, made durable.
 *
 *   durability-writer URL TAG RUN SEED OPS DEPTH BLOCKS FIRST COUNT STRIDE SYNC_EVERY FUA_PERMILLE
 *
 * Each write covers BLOCKS 512-byte blocks at an LBA that is a multiple of
 * BLOCKS in [FIRST, FIRST+COUNT): when STRIDE is 0, random (seeded by SEED)
 * in a window from FIRST that grows with the writes issued to all of it by
 * the last one (a fill: first writes to new segments all along the run, among
 * overwrites), else FIRST, FIRST+STRIDE, ... in turn. No write overlaps one in flight, so
 * completion order is the order of the data. After every SYNC_EVERY writes
 * issued (0: never) one SYNCHRONIZE CACHE(10) of the whole LUN is issued,
 * alongside the writes; FUA_PERMILLE of the writes are WRITE(16) with FUA.
 *
 * Every block: "TDUR", TAG (u32 LE), LBA (u64 LE), ID = RUN<<32 | write
 * number (u64 LE), an FNV-1a 64 checksum of the rest (u64 LE at 24), then
 * filler derived from ID and LBA (see blockOf in durability.ts).
 *
 * Output lines, in event order:
 *   WI ID LBA BLOCKS FUA          a write issued
 *   W ID STATUS                   it completed: GOOD, CHECK KK/AA/QQ, STATUS 0xNN, or LOST
 *   SI ID                         a SYNCHRONIZE CACHE issued (ID counts syncs)
 *   S ID STATUS                   it completed
 *   END
 * Exit 0 once every command completed; 2 when login or a transport failed.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define BLOCK 512
#define MAX_DEPTH 64

struct slot {
	int busy;
	int sync;
	uint64_t id;
	uint64_t lba;
	unsigned char *data;
};

static struct iscsi_context *iscsi;
static int lun;
static struct slot slots[MAX_DEPTH];
static int inflight;
static uint32_t tag, run;
static unsigned blocks;
static uint64_t rng;

static uint64_t xorshift(uint64_t *s) {
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void put64(unsigned char *p, uint64_t v) {
	for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t fnv(const unsigned char *p, size_t n, uint64_t h) {
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static void fill_block(unsigned char *b, uint64_t lba, uint64_t id) {
	memcpy(b, "TDUR", 4);
	for (int i = 0; i < 4; i++) b[4 + i] = (unsigned char)(tag >> (8 * i));
	put64(b + 8, lba);
	put64(b + 16, id);
	uint64_t s = (id ^ (lba * 0x9e3779b97f4a7c15ULL)) | 1;
	for (int off = 32; off < BLOCK; off += 8) put64(b + off, xorshift(&s));
	uint64_t h = fnv(b, 24, 0xcbf29ce484222325ULL);
	put64(b + 24, fnv(b + 32, BLOCK - 32, h));
}

static void print_status(const char *kind, uint64_t id, int status, struct scsi_task *t) {
	if (status == SCSI_STATUS_GOOD && t != NULL && t->status == SCSI_STATUS_GOOD) {
		printf("%s %" PRIu64 " GOOD\n", kind, id);
	} else if (t != NULL && t->status == SCSI_STATUS_CHECK_CONDITION) {
		printf("%s %" PRIu64 " CHECK %02x/%02x/%02x\n", kind, id, t->sense.key, (t->sense.ascq >> 8) & 0xff, t->sense.ascq & 0xff);
	} else if (t != NULL && status != SCSI_STATUS_ERROR && status != SCSI_STATUS_CANCELLED) {
		printf("%s %" PRIu64 " STATUS 0x%02x\n", kind, id, t->status);
	} else {
		printf("%s %" PRIu64 " LOST\n", kind, id);
	}
}

static void done(struct iscsi_context *ctx, int status, void *command_data, void *private_data) {
	(void)ctx;
	struct slot *s = private_data;
	struct scsi_task *t = command_data;
	print_status(s->sync ? "S" : "W", s->id, status, t);
	if (t != NULL) scsi_free_scsi_task(t);
	s->busy = 0;
	inflight--;
}

static int overlaps(uint64_t lba) {
	for (int i = 0; i < MAX_DEPTH; i++)
		if (slots[i].busy && !slots[i].sync && slots[i].lba == lba) return 1;
	return 0;
}

static struct slot *free_slot(void) {
	for (int i = 0; i < MAX_DEPTH; i++)
		if (!slots[i].busy) return &slots[i];
	return NULL;
}

static void service(void) {
	struct pollfd pfd = { .fd = iscsi_get_fd(iscsi), .events = iscsi_which_events(iscsi) };
	int n = poll(&pfd, 1, 1000);
	if (n < 0) return;
	if (iscsi_service(iscsi, n == 0 ? 0 : pfd.revents) < 0) {
		fprintf(stderr, "transport: %s\n", iscsi_get_error(iscsi));
		exit(2);
	}
}

int main(int argc, char **argv) {
	if (argc != 13) {
		fprintf(stderr, "usage: %s URL TAG RUN SEED OPS DEPTH BLOCKS FIRST COUNT STRIDE SYNC_EVERY FUA_PERMILLE\n", argv[0]);
		return 2;
	}
	tag = (uint32_t)strtoul(argv[2], NULL, 0);
	run = (uint32_t)strtoul(argv[3], NULL, 0);
	rng = strtoull(argv[4], NULL, 0) * 2654435761ULL + 0x1234567ULL;
	unsigned ops = strtoul(argv[5], NULL, 0);
	int depth = atoi(argv[6]);
	blocks = strtoul(argv[7], NULL, 0);
	uint64_t first = strtoull(argv[8], NULL, 0), count = strtoull(argv[9], NULL, 0), stride = strtoull(argv[10], NULL, 0);
	unsigned sync_every = strtoul(argv[11], NULL, 0), fua_permille = strtoul(argv[12], NULL, 0);
	if (depth < 1 || depth > MAX_DEPTH - 1 || blocks == 0 || count < blocks) {
		fprintf(stderr, "bad arguments\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	iscsi = iscsi_create_context("iqn.2026-11.org.tabula:durability-writer");
	if (iscsi == NULL) return 2;
	struct iscsi_url *url = iscsi_parse_full_url(iscsi, argv[1]);
	if (url == NULL) {
		fprintf(stderr, "bad URL %s: %s\n", argv[1], iscsi_get_error(iscsi));
		return 2;
	}
	lun = url->lun;
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE);
	iscsi_set_targetname(iscsi, url->target);
	if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "login to %s failed: %s\n", argv[1], iscsi_get_error(iscsi));
		return 2;
	}
	for (int i = 0; i < MAX_DEPTH; i++) slots[i].data = malloc((size_t)blocks * BLOCK);
	uint64_t slots_in_range = count / blocks;
	unsigned issued = 0, syncs = 0, since_sync = 0;
	while (issued < ops || inflight > 0) {
		while (issued < ops && inflight < depth) {
			struct slot *s = free_slot();
			if (sync_every > 0 && since_sync >= sync_every) {
				since_sync = 0;
				s->busy = 1;
				s->sync = 1;
				s->id = ++syncs;
				printf("SI %" PRIu64 "\n", s->id);
				if (iscsi_synchronizecache10_task(iscsi, lun, 0, 0, 0, 0, done, s) == NULL) {
					fprintf(stderr, "SYNCHRONIZE CACHE: %s\n", iscsi_get_error(iscsi));
					return 2;
				}
				inflight++;
				continue;
			}
			uint64_t lba;
			if (stride > 0) {
				lba = first + ((uint64_t)issued * stride) % count;
				lba -= (lba - first) % blocks;
				if (overlaps(lba)) break;
			} else {
				int tries = 0;
				uint64_t window = slots_in_range * (issued + 1) / ops;
				if (window == 0) window = 1;
				do lba = first + (xorshift(&rng) % window) * blocks;
				while (overlaps(lba) && ++tries < 100);
				if (tries >= 100) break;
			}
			int fua = (xorshift(&rng) % 1000) < fua_permille;
			uint64_t id = ((uint64_t)run << 32) | ++issued;
			since_sync++;
			s->busy = 1;
			s->sync = 0;
			s->id = id;
			s->lba = lba;
			for (unsigned b = 0; b < blocks; b++) fill_block(s->data + (size_t)b * BLOCK, lba + b, id);
			printf("WI %" PRIu64 " %" PRIu64 " %u %d\n", id, lba, blocks, fua);
			if (iscsi_write16_task(iscsi, lun, lba, s->data, blocks * BLOCK, BLOCK, 0, 0, fua, 0, 0, done, s) == NULL) {
				fprintf(stderr, "WRITE: %s\n", iscsi_get_error(iscsi));
				return 2;
			}
			inflight++;
		}
		service();
	}
	printf("END\n");
	iscsi_logout_sync(iscsi);
	iscsi_destroy_url(url);
	iscsi_destroy_context(iscsi);
	return 0;
}
