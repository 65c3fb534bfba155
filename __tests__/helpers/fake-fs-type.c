/* Preloaded by doctor.test.mjs: statfs(2) of a path under FAKE_FS_TYPE_UNDER reports the file
 * system type FAKE_FS_TYPE (a number, e.g. 0x6969 for NFS), as a pool on a network mount would
 * show it; no test machine can mount NFS or SMB. Everything else is the real call's answer. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>

static void fake(const char *path, __fsword_t *type) {
  const char *under = getenv("FAKE_FS_TYPE_UNDER");
  const char *value = getenv("FAKE_FS_TYPE");
  if (under && value && path && strncmp(path, under, strlen(under)) == 0) *type = (__fsword_t)strtoul(value, NULL, 0);
}

int statfs(const char *path, struct statfs *buf) {
  static int (*real)(const char *, struct statfs *);
  if (!real) real = (int (*)(const char *, struct statfs *))dlsym(RTLD_NEXT, "statfs");
  int r = real(path, buf);
  if (r == 0) fake(path, &buf->f_type);
  return r;
}

int statfs64(const char *path, struct statfs64 *buf) {
  static int (*real)(const char *, struct statfs64 *);
  if (!real) real = (int (*)(const char *, struct statfs64 *))dlsym(RTLD_NEXT, "statfs64");
  int r = real(path, buf);
  if (r == 0) fake(path, &buf->f_type);
  return r;
}
