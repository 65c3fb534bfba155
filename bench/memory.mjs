// What a bench process holds, from /proc/self/smaps_rollup (Linux): RSS, PSS (a page shared by
// several processes charged to each in part) and anonymous pages (private to the process).
import { readFileSync } from "node:fs";

const MB = 1024 * 1024;

/** A full collection, in whichever runtime runs this (Node needs --expose-gc). */
export function collectGarbage() {
  if (typeof Bun !== "undefined") Bun.gc(true);
  else globalThis.gc?.();
}

export function memory() {
  try {
    const s = readFileSync("/proc/self/smaps_rollup", "utf8");
    const mb = (k) => Number(s.match(new RegExp(`^${k}:\\s+(\\d+)`, "m"))?.[1] ?? Number.NaN) / 1024;
    return { rssMB: mb("Rss"), pssMB: mb("Pss"), anonMB: mb("Anonymous") };
  } catch {
    return { rssMB: process.memoryUsage().rss / MB, pssMB: Number.NaN, anonMB: Number.NaN };
  }
}
