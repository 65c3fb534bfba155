/* Preloaded by os-hostility.test.mjs: while the file named by THREADS_REFUSED_WHILE exists,
 * pthread_create fails with EAGAIN, as it does in a container at its pids limit (docker's
 * --pids-limit, systemd's TasksMax), which RLIMIT_NPROC cannot stand for when running as root. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *), void *arg) {
  static create_fn real;
  if (!real) real = (create_fn)dlsym(RTLD_NEXT, "pthread_create");
  const char *flag = getenv("THREADS_REFUSED_WHILE");
  if (flag && access(flag, F_OK) == 0) return EAGAIN;
  return real(thread, attr, start, arg);
}
