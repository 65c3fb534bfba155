// A hostile operating system and neighbours: a process stopped (Ctrl-Z, SIGSTOP) mid-refresh,
// file descriptors exhausted, a full disk. Each case asks what a user would: is any refresh token
// presented twice, is anything lost, is every error coded, and does the pool recover once the
// condition clears. Cases the machine cannot provide (no signals, not root for a mount) are
// skipped with the reason.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { useMock, seedPool, account } from "./helpers/pool-env.mjs";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const POLLER = here("./helpers/pool-poller.mjs");
const mock = useMock();

const canStop = process.platform !== "win32";
const pause = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await pause(10);
  }
}

function run(args, env) {
  const child = spawn(process.execPath, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const done = new Promise((resolve) => child.on("close", (code, signal) => resolve({ code, signal, out, err })));
  return { child, done };
}

test("a process stopped (Ctrl-Z) while its refresh call is in flight reads the answer that came meanwhile: the spent token is not presented again", {
  skip: !canStop && "no SIGSTOP here",
}, async () => {
  const email = "stopped-mid-refresh@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  // The answer comes 200 ms after the call arrives; the process is stopped before that, and
  // stays stopped past its token-call timeout.
  mock.setTokenMode({ grant: "refresh_token", delayMs: 200, times: 1 });
  const arrived = mock.waitFor("token", (r) => r.grant === "refresh_token");
  const env = { ...process.env, OAUTH_POOL_PATH: path, OAUTH_POOL_TIMEOUT_MS: "1500" };
  const proc = run([POLLER, mock.url, "claude-sonnet-4-5", "once", "30000"], env);
  await arrived;
  proc.child.kill("SIGSTOP");
  try {
    await until("the token endpoint to rotate the token", () => mock.stats().perFamily[email].generation === 1);
    // Stopped past the 1.5 s the call may take while the process runs.
    await pause(2500);
  } finally {
    proc.child.kill("SIGCONT");
  }
  const { code, out, err } = await proc.done;
  const fam = mock.stats().perFamily[email];
  assert.equal(fam.reuse, 0, `the spent refresh token was presented again (the login was revoked): ${err.slice(-400)}`);
  assert.equal(fam.revoked, false);
  assert.equal(fam.refreshCalls, 1);
  assert.equal(code, 0, err.slice(-400));
  assert.equal(JSON.parse(out.trim().split("\n").at(-1)).status, 200, "the request was served with the new token");
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the new tokens are in the file");
});
