// The napi-rs platform triple of this process (musl told apart from glibc at run time).
import { readFileSync } from "node:fs";

function isMusl() {
  if (process.platform !== "linux") return false;
  try {
    const report = typeof process.report?.getReport === "function" ? process.report.getReport() : null;
    if (report?.header?.glibcVersionRuntime) return false;
    if (Array.isArray(report?.sharedObjects) && report.sharedObjects.some((f) => f.includes("libc.musl-") || f.includes("ld-musl-"))) return true;
  } catch {}
  try {
    return readFileSync("/usr/bin/ldd", "utf8").includes("musl");
  } catch {}
  return false;
}

/** The napi-rs platform triple of this process, e.g. "linux-x64-gnu". */
export function platformTriple() {
  const { platform, arch } = process;
  if (platform === "linux") return `linux-${arch}-${isMusl() ? "musl" : "gnu"}`;
  if (platform === "win32") return `win32-${arch}-msvc`;
  if (platform === "darwin") return `darwin-${arch}`;
  return `${platform}-${arch}`;
}
