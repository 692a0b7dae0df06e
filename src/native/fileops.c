// Linux file-space system calls Node.js does not expose: hole punching,
// zero ranges and SEEK_DATA/SEEK_HOLE. Used through src/blockdev/file-io.ts
// for thin provisioning (UNMAP, WRITE SAME with UNMAP, GET LBA STATUS) and
// container zeroing, and posix_fadvise (the benchmark puts every backing
// file's page cache in the same state), and what O_DIRECT needs: the
// alignment a descriptor's direct I/O requires and where a Buffer's bytes
// sit in memory (Node has no aligned allocator).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code, message, error;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_int32(env, err, &code);
  napi_create_error(env, NULL, message, &error);
  napi_set_named_property(env, error, "errno", code);
  napi_throw(env, error);
  return NULL;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, int32_t *fd, int64_t *a, int64_t *b) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, NULL, "wrong number of arguments");
    return 0;
  }
  if (napi_get_value_int32(env, argv[0], fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], a) != napi_ok ||
      (want > 2 && napi_get_value_int64(env, argv[2], b) != napi_ok)) {
    napi_throw_type_error(env, NULL, "arguments must be numbers");
    return 0;
  }
  return 1;
}

static napi_value fallocate_mode(napi_env env, napi_callback_info info, int mode, const char *what) {
  int32_t fd; int64_t off, len;
  if (!get_args(env, info, 3, &fd, &off, &len)) return NULL;
  if (fallocate(fd, mode, off, len) != 0) return throw_errno(env, what, errno);
  napi_value undef;
  napi_get_undefined(env, &undef);
  return undef;
}

// punchHole(fd, offset, length): deallocate; reads return zeros afterwards.
static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return fallocate_mode(env, info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "fallocate(PUNCH_HOLE)");
}

// zeroRange(fd, offset, length): zero without writing data blocks.
static napi_value zero_range(napi_env env, napi_callback_info info) {
  return fallocate_mode(env, info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "fallocate(ZERO_RANGE)");
}

// seek(fd, offset, whence) -> offset, or -1 when there is no data/hole past offset (ENXIO).
static napi_value seek_common(napi_env env, napi_callback_info info, int whence, const char *what) {
  int32_t fd; int64_t off, unused = 0;
  if (!get_args(env, info, 2, &fd, &off, &unused)) return NULL;
  off_t r = lseek(fd, off, whence);
  if (r < 0 && errno != ENXIO) return throw_errno(env, what, errno);
  napi_value out;
  napi_create_int64(env, r < 0 ? -1 : (int64_t)r, &out);
  return out;
}
static napi_value seek_data(napi_env env, napi_callback_info info) { return seek_common(env, info, SEEK_DATA, "lseek(SEEK_DATA)"); }
// seekEnd(fd): the size of a file or block device (fstat reports 0 for block
// devices, and SEEK_HOLE is EINVAL on them).
static napi_value seek_end(napi_env env, napi_callback_info info) { return seek_common(env, info, SEEK_END, "lseek(SEEK_END)"); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return seek_common(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)"); }

// fadvise(fd, offset, length, advice): posix_fadvise; advice is POSIX_FADV_*.
static napi_value fadvise(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int32_t fd, advice;
  int64_t off, len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4) {
    napi_throw_type_error(env, NULL, "wrong number of arguments");
    return NULL;
  }
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &off) != napi_ok ||
      napi_get_value_int64(env, argv[2], &len) != napi_ok || napi_get_value_int32(env, argv[3], &advice) != napi_ok) {
    napi_throw_type_error(env, NULL, "arguments must be numbers");
    return NULL;
  }
  int err = posix_fadvise(fd, off, len, advice);  // returns the error, does not set errno
  if (err != 0) return throw_errno(env, "posix_fadvise", err);
  napi_value undef;
  napi_get_undefined(env, &undef);
  return undef;
}

// misalignment(buffer, align): the buffer's data address modulo align (a power of two).
static napi_value misalignment(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  void *data;
  size_t len;
  int64_t align;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) {
    napi_throw_type_error(env, NULL, "wrong number of arguments");
    return NULL;
  }
  if (napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok || napi_get_value_int64(env, argv[1], &align) != napi_ok ||
      align <= 0 || (align & (align - 1)) != 0) {
    napi_throw_type_error(env, NULL, "arguments must be a Buffer and a power of two");
    return NULL;
  }
  napi_value out;
  napi_create_int64(env, (int64_t)((uintptr_t)data & (uintptr_t)(align - 1)), &out);
  return out;
}

// dioAlignment(fd) -> { memory, offset, logicalBlock }: what direct I/O on fd
// needs (statx STATX_DIOALIGN, Linux >= 6.1; 0 when not reported) and, for a
// block device, its logical block size (BLKSSZGET; 0 for anything else).
static napi_value dio_alignment(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "dioAlignment(fd): fd must be a number");
    return NULL;
  }
  int64_t mem = 0, off = 0, lbs = 0;
#ifdef STATX_DIOALIGN
  struct statx stx;
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN | STATX_TYPE, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN)) {
    mem = stx.stx_dio_mem_align;
    off = stx.stx_dio_offset_align;
  }
#endif
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) {
    int sz = 0;
    if (ioctl(fd, BLKSSZGET, &sz) == 0) lbs = sz;
  }
  napi_value out, v;
  napi_create_object(env, &out);
  napi_create_int64(env, mem, &v);
  napi_set_named_property(env, out, "memory", v);
  napi_create_int64(env, off, &v);
  napi_set_named_property(env, out, "offset", v);
  napi_create_int64(env, lbs, &v);
  napi_set_named_property(env, out, "logicalBlock", v);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_default, NULL},
    {"zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_default, NULL},
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_default, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_default, NULL},
    {"seekEnd", NULL, seek_end, NULL, NULL, NULL, napi_default, NULL},
    {"fadvise", NULL, fadvise, NULL, NULL, NULL, napi_default, NULL},
    {"misalignment", NULL, misalignment, NULL, NULL, NULL, napi_default, NULL},
    {"dioAlignment", NULL, dio_alignment, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
