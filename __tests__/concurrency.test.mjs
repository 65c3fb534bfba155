// Many real processes on one just-expired account, and a process killed while it holds the
// refresh lock (issue 6). OAUTH_POOL_SOAK_PROCS / OAUTH_POOL_SOAK_REQUESTS scale it up.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { useMock, seedPool, account, mode, runWorkersTogether } from "./helpers/pool-env.mjs";

const PROCS = Number(process.env.OAUTH_POOL_SOAK_PROCS ?? 20);
const REQUESTS = Number(process.env.OAUTH_POOL_SOAK_REQUESTS ?? 50);

const mock = useMock();

const here = (p) => fileURLToPath(new URL(p, import.meta.url));

function run(script, args, { stdin = "ignore" } = {}) {
  const child = spawn(process.execPath, [here(script), ...args], { env: process.env, stdio: [stdin, "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  const done = new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, out }));
  });
  return { child, done };
}

test(`${PROCS} processes x ${REQUESTS} requests on a just-expired account: one refresh, no reuse, all served`, { timeout: 600_000 }, async () => {
  const path = await seedPool(mock, ["hot@x.test"], { expired: ["hot@x.test"] });
  mock.setTokenMode({ delayMs: 100, grant: "refresh_token" });
  const checker = run("./helpers/pool-checker.mjs", [path], { stdin: "pipe" });
  const results = await runWorkersTogether(here("./helpers/pool-worker.mjs"), PROCS, [path, mock.url, String(REQUESTS)]);
  checker.child.stdin.end();
  const check = JSON.parse((await checker.done).out);
  const served = results.flatMap((r) => {
    assert.equal(r.code, 0);
    return JSON.parse(r.out);
  });
  assert.equal(served.length, PROCS * REQUESTS);
  const failures = served.filter((r) => r.status !== 200);
  assert.equal(failures.length, 0, JSON.stringify(failures.slice(0, 3)));
  const fam = mock.stats().perFamily["hot@x.test"];
  assert.equal(fam.refreshCalls, 1, "exactly one refresh for this generation");
  assert.equal(fam.reuse, 0);
  assert.equal(fam.revoked, false);
  assert.equal(account(path, "hot@x.test").refresh, mock.tokens("hot@x.test").refresh);
  assert.ok(check.reads > 50, `checker read ${check.reads} times`);
  assert.equal(check.parseErrors, 0);
  assert.equal(check.badMode, 0);
  assert.equal(mode(path), 0o600);
});

test("a process killed while it holds the refresh lock does not block the next one, though a child it started meanwhile lives on", async (t) => {
  const path = await seedPool(mock, ["killed@x.test"], { expired: ["killed@x.test"] });
  mock.setTokenMode({ hang: true, grant: "refresh_token" });
  // The victim's refresh call arriving at the token endpoint is the signal that it holds the
  // lock (it takes it before the re-read and keeps it until the write).
  const refreshing = mock.waitFor("token", (r) => r.grant === "refresh_token");
  const victim = run("./helpers/pool-worker.mjs", [path, mock.url, "1"]);
  await refreshing;
  // A child started while the lock is held must not inherit it (close-on-exec), or the lock
  // stays held for as long as the child runs.
  victim.child.kill("SIGUSR2");
  const inheritor = await new Promise((resolve, reject) => {
    let seen = "";
    victim.child.stdout.on("data", (d) => {
      seen += d;
      const m = /child (\d+)/.exec(seen);
      if (m) resolve(Number(m[1]));
    });
    victim.child.on("close", () => reject(new Error("the victim ended before starting its child")));
  });
  t.after(() => {
    try {
      process.kill(inheritor, "SIGKILL");
    } catch {}
  });
  victim.child.kill("SIGKILL");
  await victim.done;
  process.kill(inheritor, 0); // still running
  mock.setTokenMode(null);
  const started = Date.now();
  const next = run("./helpers/pool-worker.mjs", [path, mock.url, "1"]);
  const r = await next.done;
  const elapsed = Date.now() - started;
  assert.equal(r.code, 0);
  assert.equal(JSON.parse(r.out)[0].status, 200);
  assert.ok(elapsed < 3000, `the next process took ${elapsed} ms`);
  assert.equal(mock.stats().perFamily["killed@x.test"].reuse, 0);
});

test("6 processes meeting a 401 on a token their clocks call valid: one forced refresh between them, the others adopt it; no reuse, all served", async () => {
  const path = await seedPool(mock, ["revoked@x.test"]);
  mock.revoke("revoked@x.test"); // the access token dies early; the refresh token still works
  const results = await runWorkersTogether(here("./helpers/pool-worker.mjs"), 6, [path, mock.url, "2"]);
  const served = results.flatMap((r) => {
    assert.equal(r.code, 0);
    return JSON.parse(r.out);
  });
  assert.deepEqual(
    served.map((r) => r.status),
    Array(12).fill(200),
    JSON.stringify(served.filter((r) => r.status !== 200).slice(0, 2)),
  );
  const fam = mock.stats().perFamily["revoked@x.test"];
  assert.deepEqual({ refreshCalls: fam.refreshCalls, reuse: fam.reuse, revoked: fam.revoked }, { refreshCalls: 1, reuse: 0, revoked: false });
  assert.equal(account(path, "revoked@x.test").refresh, mock.tokens("revoked@x.test").refresh);
});

test("6 processes on a login whose refresh token the endpoint refuses: it is presented once, the others read the refusal written under the lock; every request ends coded", async () => {
  const path = await seedPool(mock, ["refused@x.test"], { expired: ["refused@x.test"] });
  mock.revoke("refused@x.test", { family: true });
  // Slow enough that the other five queue on the refresh lock while the first holds it.
  mock.setTokenMode({ delayMs: 700, grant: "refresh_token", times: Infinity });
  const results = await runWorkersTogether(here("./helpers/pool-worker.mjs"), 6, [path, mock.url, "1"]);
  mock.setTokenMode(null);
  const answers = results.flatMap((r) => {
    assert.equal(r.code, 0);
    return JSON.parse(r.out);
  });
  assert.equal(answers.length, 6);
  for (const a of answers) assert.ok(a.error || a.status >= 400, JSON.stringify(a));
  const fam = mock.stats().perFamily["refused@x.test"];
  assert.equal(fam.refreshCalls, 1, "the refused token was presented once");
  const entry = account(path, "refused@x.test");
  assert.equal(entry.status, "auth-error");
  assert.ok(entry.refresh, "the refused token is kept, never deleted");
});
