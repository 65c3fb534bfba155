// The napi-rs platform triple of this process (musl told apart from glibc at run time).
import { readFileSync } from "node:fs";

function isMusl() {
  if (process.platform !== "linux") return false;
  try {
    // A report looks up the host name of both ends of every open socket, synchronously: the
    // first native call of a process with connections open stopped it for as long as its
    // resolver took (30 s with one that does not answer; found by a review).
    const report = typeof process.report?.getReport === "function" ? reportWithoutNetwork() : null;
    if (report?.header?.glibcVersionRuntime) return false;
    if (Array.isArray(report?.sharedObjects) && report.sharedObjects.some((f) => f.includes("libc.musl-") || f.includes("ld-musl-"))) return true;
  } catch {}
  try {
    return readFileSync("/usr/bin/ldd", "utf8").includes("musl");
  } catch {}
  return false;
}

function reportWithoutNetwork() {
  const before = process.report.excludeNetwork;
  try {
    process.report.excludeNetwork = true;
    return process.report.getReport();
  } finally {
    process.report.excludeNetwork = before;
  }
}

/**
 * The napi-rs platform triple of this process, e.g. "linux-x64-gnu": the name `napi build
 * --platform` gives the local build (its `parseTriple`), which 32-bit ARM spells with its float
 * ABI (`linux-arm-gnueabihf`, `android-arm-eabi`); named otherwise, a Raspberry Pi told to build
 * from source was told so again after the build.
 */
export function platformTriple() {
  const { platform, arch } = process;
  if (platform === "linux" && arch === "arm") return `linux-arm-${isMusl() ? "musleabihf" : "gnueabihf"}`;
  if (platform === "linux") return `linux-${arch}-${isMusl() ? "musl" : "gnu"}`;
  if (platform === "android" && arch === "arm") return "android-arm-eabi";
  if (platform === "win32") return `win32-${arch}-msvc`;
  if (platform === "darwin") return `darwin-${arch}`;
  return `${platform}-${arch}`;
}
