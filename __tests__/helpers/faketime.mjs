// libfaketime, which the clock and fleet tests preload to move a process's wall clock.
import { existsSync, rmSync } from "node:fs";

export const FAKETIME_LIB = ["x86_64-linux-gnu", "aarch64-linux-gnu"].map((arch) => `/usr/lib/${arch}/faketime/libfaketime.so.1`).find((p) => existsSync(p));

/**
 * What libfaketime leaves in /dev/shm for the process `pid`: the first process it is preloaded
 * into makes a semaphore and a shared memory object named by its pid (its children share them)
 * and unlinks them in its exit handler, which a process that ends without the C library's exit
 * handlers never runs (Bun's `process.exit`, a signal): every run of the clock tests under Bun
 * left 22 files there.
 */
export const faketimeFiles = (pid) => [`/dev/shm/faketime_shm_${pid}`, `/dev/shm/sem.faketime_sem_${pid}`];

/** Removes what libfaketime made for `child` once it has ended, however it ended. */
export function forgetFaketimeOnExit(child) {
  const { pid } = child;
  if (pid === undefined) return;
  child.once("exit", () => {
    for (const file of faketimeFiles(pid)) rmSync(file, { force: true });
  });
}
