// Looks at a native binary before it is loaded. dlopen maps an ELF file's segments as its header
// says and touches them: a file cut short (an install killed mid-write, a full disk, a copy
// interrupted) has segments past its end, and the first touch there is SIGBUS, which takes the
// whole host (OpenCode) down instead of failing one call. Reading the header and the program
// headers costs a few hundred bytes; a file they describe as longer than it is, or built for
// another machine, is refused here with a reason a person can act on. Anything this does not
// understand is left to dlopen, which gives its own error: only a clear defect is refused.
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";

// e_machine for each Node architecture (ELF spec; the names are what `file` prints).
const MACHINES = {
  x64: [62, "x86-64"],
  arm64: [183, "aarch64"],
  ia32: [3, "i386"],
  arm: [40, "arm"],
  ppc64: [21, "ppc64"],
  s390x: [22, "s390x"],
  riscv64: [243, "riscv"],
  loong64: [258, "loongarch"],
};
const MACHINE_NAMES = Object.fromEntries(Object.values(MACHINES).map(([n, name]) => [n, name]));
const BITS64 = new Set(["x64", "arm64", "ppc64", "s390x", "riscv64", "loong64"]);

// Platforms whose shared libraries are ELF. macOS (Mach-O) and Windows (PE) load a short file
// with an error, not a fault, and are left to the loader.
const ELF_PLATFORMS = new Set(["linux", "android", "freebsd", "openbsd", "netbsd", "sunos"]);

const PT_LOAD = 1;
const HEAD = 4096;

/** What the first bytes say the file is, when it is no ELF. */
function describe(head) {
  if (head.length === 0) return "an empty file";
  const magic = head.length >= 4 ? head.readUInt32BE(0) : 0;
  if (head.length >= 2 && head[0] === 0x4d && head[1] === 0x5a) return "a Windows DLL, not a library for this system";
  if ([0xfeedfacf, 0xcffaedfe, 0xfeedface, 0xcefaedfe, 0xcafebabe].includes(magic)) return "a macOS library, not one for this system";
  const text = head.subarray(0, 200).toString("latin1");
  if (/^[\t\n\r\x20-\x7e]*$/.test(text)) {
    const first = text.split("\n")[0].trim().slice(0, 60);
    return `a text file${first ? ` ("${first}")` : ""}, not a library${/git-lfs/.test(first) ? " (a Git LFS pointer)" : ""}`;
  }
  return "not an ELF library";
}

/**
 * Why the native binary at `path` cannot be loaded on this machine, or null when it looks
 * loadable (or this cannot tell: dlopen decides). Never throws.
 */
export function unloadableReason(path, { platform = process.platform, arch = process.arch } = {}) {
  if (!ELF_PLATFORMS.has(platform)) return null;
  let fd;
  try {
    // Not blocking: a FIFO named like the binary would wait for a writer (dlopen's too).
    fd = openSync(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch {
    return null;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return "not a regular file (a FIFO, a device or a directory), not a library";
    const size = st.size;
    const head = Buffer.alloc(Math.min(HEAD, size));
    const got = readSync(fd, head, 0, head.length, 0);
    const h = head.subarray(0, got);
    if (h.length < 4 || h.readUInt32BE(0) !== 0x7f454c46) return describe(h);
    if (h.length < 52) return `cut short (${size} bytes)`;
    const is64 = h[4] === 2;
    if (h[4] !== 1 && h[4] !== 2) return "not an ELF library (unknown class)";
    if (h[5] !== 1) return null; // big-endian: leave it to dlopen
    if (arch in MACHINES && is64 !== BITS64.has(arch)) return `built for ${is64 ? 64 : 32}-bit, this machine runs ${arch}`;
    const machine = h.readUInt16LE(18);
    const expected = MACHINES[arch];
    if (expected && machine !== expected[0]) return `built for ${MACHINE_NAMES[machine] ?? `machine ${machine}`}, this machine is ${expected[1]} (${arch})`;
    if (is64 && h.length < 64) return `cut short (${size} bytes)`;
    const num = (off, wide) => (wide ? Number(h.readBigUInt64LE(off)) : h.readUInt32LE(off));
    const phoff = num(is64 ? 32 : 28, is64);
    const shoff = num(is64 ? 40 : 32, is64);
    const phentsize = h.readUInt16LE(is64 ? 54 : 42);
    const phnum = h.readUInt16LE(is64 ? 56 : 44);
    const shentsize = h.readUInt16LE(is64 ? 58 : 46);
    const shnum = h.readUInt16LE(is64 ? 60 : 48);
    // The end the file should reach: its segments, its program and section header tables.
    let needed = phoff + phentsize * phnum;
    if (shoff > 0 && shnum > 0) needed = Math.max(needed, shoff + shentsize * shnum);
    const tableEnd = phoff + phentsize * phnum;
    if (phentsize >= (is64 ? 56 : 32) && tableEnd <= size) {
      const table = Buffer.alloc(phentsize * phnum);
      if (readSync(fd, table, 0, table.length, phoff) === table.length) {
        for (let i = 0; i < phnum; i++) {
          const p = i * phentsize;
          if (table.readUInt32LE(p) !== PT_LOAD) continue;
          const offset = is64 ? Number(table.readBigUInt64LE(p + 8)) : table.readUInt32LE(p + 4);
          const filesz = is64 ? Number(table.readBigUInt64LE(p + 32)) : table.readUInt32LE(p + 16);
          needed = Math.max(needed, offset + filesz);
        }
      }
    }
    if (needed > size) return `cut short: ${size} of at least ${needed} bytes (an install or copy that did not finish)`;
    // Full length, its end zeros: the other shape an interrupted install leaves (a power cut
    // after the size was set, before the last blocks were written); dlopen faults on it. The
    // section header table is the file's last part: every entry after the first blank there.
    if (shoff > 0 && shnum > 1 && shentsize >= (is64 ? 64 : 40) && shentsize * shnum <= 1 << 20) {
      const sections = Buffer.alloc(shentsize * shnum);
      if (readSync(fd, sections, 0, sections.length, shoff) === sections.length && sections.subarray(shentsize).every((b) => b === 0)) {
        return "its end is zeros (an install or copy that did not finish)";
      }
    }
    return null;
  } catch {
    return null;
  } finally {
    try {
      closeSync(fd);
    } catch {}
  }
}
