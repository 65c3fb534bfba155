#!/usr/bin/env node
// `npm test`: everything, from a fresh clone. Installs and builds what is missing, then runs
// the Rust checks and tests, the JavaScript tests under Node and under Bun (OpenCode's runtime),
// the packaging test and the end-to-end runs of the real OpenCode and Claude Code. Stops at the
// first failing step.
//   OAUTH_POOL_TEST_QUICK=1   skip the packaging test and the OpenCode (plain and hostile) and Claude Code e2e (local iteration)
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureBuilt } from "./ensure-built.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const quick = process.env.OAUTH_POOL_TEST_QUICK === "1";
// No test may touch the real ~/.aidevops: every step runs with a throwaway HOME.
const home = mkdtempSync(join(tmpdir(), "oauth-pool-test-home-"));
const env = {
  ...process.env,
  HOME: home,
  USERPROFILE: home,
  OAUTH_POOL_PATH: join(home, ".aidevops", "oauth-pool.json"),
  CARGO_HOME: process.env.CARGO_HOME ?? join(process.env.HOME ?? home, ".cargo"),
  RUSTUP_HOME: process.env.RUSTUP_HOME ?? join(process.env.HOME ?? home, ".rustup"),
};
delete env.OAUTH_POOL_LOG;

const timings = [];
function step(name, cmd, args) {
  const started = Date.now();
  console.log(`\n=== ${name}: ${cmd} ${args.join(" ")}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", env });
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  timings.push(`${name} ${secs}s`);
  if (r.status !== 0) {
    console.error(`\n*** ${name} failed (exit ${r.status ?? r.signal}) after ${secs}s`);
    process.exit(r.status || 1);
  }
}

const t0 = Date.now();
ensureBuilt();
step("rustfmt", "cargo", ["fmt", "--check"]);
step("clippy", "cargo", ["clippy", "--all-targets", "--", "-D", "warnings"]);
step("cargo test", "cargo", ["test"]);
step("js lint+format", join(root, "node_modules", ".bin", "biome"), ["ci", "--reporter=summary", "."]);
step("types", process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", "__tests__/types/tsconfig.json"]);
step("node tests", process.execPath, ["--test", "--test-concurrency=1", "__tests__/"]);
step("bun tests", join(root, "node_modules", ".bin", "bun"), ["test", "--timeout", "120000", "__tests__/"]);
step("workflow lint", process.execPath, ["scripts/lint-workflow.mjs"]);
if (!quick) {
  step("pack test", process.execPath, ["scripts/pack-test.mjs"]);
  step("opencode e2e", process.execPath, ["scripts/e2e-opencode.mjs"]);
  step("opencode hostile e2e", process.execPath, ["scripts/e2e-opencode-hostile.mjs"]);
  step("claude code e2e", process.execPath, ["scripts/e2e-claude-code.mjs"]);
}
console.log(`\nall steps passed in ${((Date.now() - t0) / 1000).toFixed(0)}s: ${timings.join(", ")}`);
