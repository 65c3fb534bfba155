// A test process that makes temp dirs through the shared helpers and ends: `pool` a pool path
// (tempPoolPath) with a file in it, exits 0; `hostile <outside>` a temp dir holding what tests
// leave (a 0500 and a 0000 directory with files, a FIFO, a listening Unix socket, files owned
// by uid 1000 when root, symlinks to `outside`), then dies of an uncaught error; `mount` a tmpfs
// mounted inside a temp dir (root, Linux), left mounted.
//   node temp-worker.mjs pool | hostile <outside> | mount
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { tempPoolPath } from "./pool-env.mjs";
import { tempDir } from "./temp.mjs";

const [how, outside] = process.argv.slice(2);
if (how === "pool") {
  const path = tempPoolPath();
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, '{"version":1,"anthropic":[]}');
} else if (how === "hostile") {
  const dir = tempDir("oauth-pool-hostile-");
  for (const [name, mode] of [
    ["read-only", 0o500],
    ["no-access", 0o000],
  ]) {
    mkdirSync(join(dir, name, "deeper"), { recursive: true });
    writeFileSync(join(dir, name, "deeper", "token"), "sk-ant-fake");
    chmodSync(join(dir, name, "deeper"), mode);
    chmodSync(join(dir, name), mode);
  }
  spawnSync("mkfifo", [join(dir, "fifo")]);
  await new Promise((resolve) => createServer().listen(join(dir, "sock"), resolve));
  if (process.getuid?.() === 0) {
    mkdirSync(join(dir, "theirs"), { mode: 0o700 });
    writeFileSync(join(dir, "theirs", "pool.json"), "{}");
    chownSync(join(dir, "theirs", "pool.json"), 1000, 1000);
    chownSync(join(dir, "theirs"), 1000, 1000);
  }
  symlinkSync(join(outside, "keep.txt"), join(dir, "link-to-file"));
  symlinkSync(join(outside, "keepdir"), join(dir, "link-to-dir"));
  throw new Error("the test failed");
} else if (how === "mount") {
  const dir = tempDir("oauth-pool-mounted-");
  mkdirSync(join(dir, "disk"));
  execFileSync("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", join(dir, "disk")]);
  writeFileSync(join(dir, "disk", "token"), "sk-ant-fake");
  process.stdout.write(`${join(dir, "disk")}\n`);
}
