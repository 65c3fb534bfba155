#!/usr/bin/env node
// `npm run soak`: the concurrency and crash tests at a larger scale than `npm test` runs them.
//   OAUTH_POOL_SOAK_PROCS (default 40), OAUTH_POOL_SOAK_REQUESTS (200), POOL_KILL_ROUNDS (1000)
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureBuilt } from "./ensure-built.mjs";
import { tempDir } from "../__tests__/helpers/temp.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
ensureBuilt();
const home = tempDir("oauth-pool-soak-");
const env = {
  ...process.env,
  HOME: home,
  CARGO_HOME: process.env.CARGO_HOME ?? join(process.env.HOME ?? home, ".cargo"),
  RUSTUP_HOME: process.env.RUSTUP_HOME ?? join(process.env.HOME ?? home, ".rustup"),
  OAUTH_POOL_PATH: join(home, "unused.json"),
  OAUTH_POOL_SOAK_PROCS: process.env.OAUTH_POOL_SOAK_PROCS ?? "40",
  OAUTH_POOL_SOAK_REQUESTS: process.env.OAUTH_POOL_SOAK_REQUESTS ?? "200",
  POOL_KILL_ROUNDS: process.env.POOL_KILL_ROUNDS ?? "1000",
};
const t0 = Date.now();
for (const [cmd, args] of [
  ["cargo", ["test", "--release", "--lib", "store::processes"]],
  [process.execPath, ["--test", "__tests__/concurrency.test.mjs", "__tests__/hardening.test.mjs"]],
]) {
  console.log(`\n=== ${cmd} ${args.join(" ")}`);
  const r = spawnSync(cmd, args, { cwd: root, env, stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status || 1);
}
console.log(
  `\nsoak passed in ${((Date.now() - t0) / 1000).toFixed(0)}s with ${env.OAUTH_POOL_SOAK_PROCS} processes x ${env.OAUTH_POOL_SOAK_REQUESTS} requests and ${env.POOL_KILL_ROUNDS} SIGKILLs`,
);
