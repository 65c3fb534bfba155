#!/usr/bin/env node
// Makes a fresh clone usable with one command: installs the npm devDependencies when they are
// missing and (re)builds the native addon when it is missing or older than its sources.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { platformTriple } from "../lib/platform.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", shell: process.platform === "win32" });
  if (r.status !== 0) {
    console.error(`\n${cmd} ${args.join(" ")} failed (exit ${r.status})`);
    process.exit(r.status ?? 1);
  }
}

function newest(path) {
  const s = statSync(path);
  if (!s.isDirectory()) return s.mtimeMs;
  return Math.max(s.mtimeMs, ...readdirSync(path).map((f) => newest(join(path, f))));
}

export function ensureBuilt({ quiet = false } = {}) {
  if (!existsSync(join(root, "node_modules", "@napi-rs", "cli"))) {
    if (!quiet) console.log("> installing npm dev dependencies");
    run("npm", ["install", "--no-audit", "--no-fund"]);
  }
  const binary = join(root, `oauth-pool.${platformTriple()}.node`);
  const sources = Math.max(newest(join(root, "src")), newest(join(root, "Cargo.toml")), newest(join(root, "build.rs")));
  if (!existsSync(binary) || statSync(binary).mtimeMs < sources) {
    if (!quiet) console.log("> building the native addon (release)");
    run("npm", ["run", "build"]);
  }
  return binary;
}

if (import.meta.url === `file://${process.argv[1]}`) ensureBuilt();
