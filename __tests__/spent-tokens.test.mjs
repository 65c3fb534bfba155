// A refresh token works once: a write that puts a spent one back over its successor loses the
// login, in the pool and at the token endpoint (the next refresh presents it, and a strict
// endpoint revokes the whole family). Each case here is a way a review found it written back:
// a rename between a script's read and its save, a save or an import waiting behind a refresh's
// write that the machine's refresh journal had not noted yet, tokens that could not be saved at
// first retried after a rename, `oauth-pool refresh` ending with the only copy of the new tokens,
// and the `refresh()` export presenting a token the pool had spent.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as lib from "../index.mjs";
import { flockAvailable, holdLock } from "./helpers/flock.mjs";
import { account, body, jsonHeaders, messagesUrl, oauthEntry, readPool, tempPoolPath, useMock, withEnv } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const CLI = fileURLToPath(new URL("../bin/oauth-pool.mjs", import.meta.url));
const mock = useMock();
const pause = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(check, what, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await pause(20);
  }
}

/** A pool of one login, `email`, with `extra` over its entry. */
async function poolOf(email, extra = {}) {
  const path = tempPoolPath();
  const entry = { ...oauthEntry(mock, email), ...extra };
  await lib.savePool({ version: 1, anthropic: [entry] }, path);
  return { path, entry };
}

/**
 * A request through the pool of `path` served by the tokens another process kept beside it:
 * they land in the file (its refresh token `live`), and no token is presented for it.
 */
async function servedByKeptTokens(path, email, live) {
  const before = mock.stats().perFamily[email].refreshCalls;
  const res = await lib.createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(res.status, 200);
  await res.text();
  await lib.flushPool(path);
  assert.equal(account(path, email).refresh, live, "the kept tokens written into the pool");
  const family = mock.stats().perFamily[email];
  assert.deepEqual([family.refreshCalls, family.reuse, family.revoked], [before, 0, false], "no token presented: the kept access token served");
}

/**
 * A request through the pool of `path` whose refresh is held at the token endpoint once it has
 * arrived there: `answer()` lets the endpoint answer, `request` is the request's Response.
 */
async function refreshHeld(path) {
  let answer;
  const held = new Promise((r) => (answer = r));
  mock.setTokenMode({ until: held, grant: "refresh_token" });
  const arrived = mock.waitFor("token");
  const request = lib.createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  await arrived;
  return { answer, request };
}

/**
 * Refreshes `email` through a request, and leaves its new tokens written to the pool but not yet
 * noted in the refresh journal (its lock held meanwhile: the note waits behind it, as it does
 * behind any other process noting a refresh). Returns the live refresh token and `release()`.
 */
async function refreshedNotNoted(email, path) {
  const presented = account(path, email).refresh;
  const { answer, request } = await refreshHeld(path);
  const journalDir = join(process.env.HOME, ".aidevops");
  mkdirSync(journalDir, { recursive: true });
  const journal = await holdLock(join(journalDir, "oauth-pool-refreshes.json.lock"));
  answer();
  // The endpoint's answer given (the mock holds a new token) and written to the pool: before the
  // answer, the file and the mock both held the presented token, which is no refresh written.
  const live = () => mock.tokens(email).refresh;
  await until(() => live() !== presented && account(path, email).refresh === live(), "the refresh's write");
  return {
    live: live(),
    async release() {
      await journal.release();
      const res = await request;
      assert.equal(res.status, 200);
      await res.text();
    },
  };
}

for (const copyKind of ["loadPool", "a plain copy"]) {
  test(`a script that renamed an account (${copyKind}, edit, savePool) keeps the tokens a refresh wrote under the old name meanwhile`, async () => {
    // A plain copy (JSON.parse of the file) is known only by the journal, which names the
    // account the token was spent under: found by its new name alone, the spent token went back.
    const kind = copyKind === "loadPool" ? "" : "plain-";
    const [before, after] = [`${kind}old-name@x.test`, `${kind}new-name@x.test`];
    const { path, entry } = await poolOf(before);
    const copy = copyKind === "loadPool" ? await lib.loadPool(path) : readPool(path);
    const r = await lib.refreshAccount(before, path);
    assert.equal(r.outcome, "refreshed");
    copy.anthropic[0].email = after;
    await lib.savePool(copy, path);
    const live = mock.tokens(before).refresh;
    assert.notEqual(live, entry.refresh);
    assert.deepEqual(
      readPool(path).anthropic.map((a) => [a.email, a.refresh === live ? "live" : a.refresh === entry.refresh ? "spent" : "other"]),
      [[after, "live"]],
    );
    assert.equal((await lib.refreshAccount(after, path)).outcome, "refreshed");
    assert.equal(mock.stats().perFamily[before].revoked, false);
  });
}

for (const copyKind of ["a plain copy", "a loadPool copy"]) {
  test(`savePool of ${copyKind} after a refresh whose journal note is still to come keeps the new tokens, though they expire sooner`, {
    skip: !flockAvailable,
  }, async () => {
    // The pool believed the access token good for 10 h (refreshed while the clock ran fast);
    // the API refuses it, and the refresh's tokens last the mock's 8 h: sooner than the copy's.
    const email = `sooner-${copyKind.split(" ")[1]}@x.test`;
    const { path, entry } = await poolOf(email, { expires: Date.now() + 10 * 3600_000 });
    mock.revoke(email);
    const copy = copyKind === "a plain copy" ? readPool(path) : await lib.loadPool(path);
    const refreshed = await refreshedNotNoted(email, path);
    try {
      copy.note = "edited by a script";
      await lib.savePool(copy, path);
      const stored = account(path, email).refresh;
      assert.equal(stored === refreshed.live ? "live" : stored === entry.refresh ? "spent" : "other", "live");
      assert.equal(readPool(path).note, "edited by a script", "the script's own change is saved");
    } finally {
      await refreshed.release();
    }
  });
}

test("import-claude-code of a file the pool refreshed a moment ago, its journal note still to come, is refused and the new tokens stay", {
  skip: !flockAvailable,
}, async () => {
  const { path, entry } = await poolOf("imported@x.test", { expires: Date.now() - 1000 });
  const credentialsPath = join(tempDir("claude-code-"), ".credentials.json");
  writeFileSync(credentialsPath, JSON.stringify({ claudeAiOauth: { accessToken: entry.access, refreshToken: entry.refresh, expiresAt: Date.now() - 1000 } }), {
    mode: 0o600,
  });
  const refreshed = await refreshedNotNoted("imported@x.test", path);
  try {
    await assert.rejects(
      lib.importClaudeCode({ credentialsPath, email: "imported@x.test", path }),
      (e) => e.code === "OAUTH_INVALID_GRANT" && /already spent/.test(e.message),
    );
    assert.equal(account(path, "imported@x.test").refresh, refreshed.live);
  } finally {
    await refreshed.release();
  }
});

test("an account renamed while its refresh token is out: another process needing it under the new name waits for that refresh instead of presenting the token too", async () => {
  // The refresh lock was the account's name's: under the new name, another process took a lock
  // nobody held and presented the same token whenever the machine's refresh journal could not
  // be asked (here a HOME that is a file; also its lock held past 2 s), and the login was
  // revoked. The token's own lock is held beside the name's.
  const { path } = await poolOf("before-rename@x.test", { expires: Date.now() - 1000 });
  const { answer, request } = await refreshHeld(path);
  const copy = await lib.loadPool(path);
  copy.anthropic[0].email = "after-rename@x.test";
  await lib.savePool(copy, path);
  const home = join(tempDir("home-is-a-file-"), "home");
  writeFileSync(home, "");
  const worker = fileURLToPath(new URL("./helpers/pool-worker.mjs", import.meta.url));
  const other = spawn(process.execPath, [worker, path, mock.url, "1"], {
    env: { ...process.env, HOME: home, OAUTH_POOL_LOG: "info" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  other.stdout.on("data", (d) => (out += d));
  other.stderr.on("data", (d) => (err += d));
  const ended = new Promise((r) => other.on("close", r));
  try {
    // Either it says it waits, or its refresh reaches the endpoint (the token presented twice).
    const presentedAgain = mock.waitFor("token");
    await Promise.race([until(() => /has this refresh token out; waiting/.test(err), "the other process to wait", 30_000), presentedAgain]);
  } finally {
    answer();
  }
  const res = await request;
  assert.equal(res.status, 200);
  await res.text();
  assert.equal(await ended, 0, err);
  assert.deepEqual(
    JSON.parse(out.trim().split("\n").at(-1)).map((r) => [r.status, r.account]),
    [[200, "after-rename@x.test"]],
  );
  const family = mock.stats().perFamily["before-rename@x.test"];
  assert.deepEqual([family.reuse, family.revoked], [0, false], "the token presented once");
  assert.equal(account(path, "after-rename@x.test").refresh, mock.tokens("before-rename@x.test").refresh);
  assert.deepEqual(
    readdirSync(dirname(path)).filter((n) => n.endsWith(".token.lock")),
    [],
    "the token's lock goes with its refresh",
  );
});

test("tokens a process could not save before it ended are kept beside the pool (0600) and taken by the next process, never the spent token presented", async () => {
  // The pool file deleted (a sync tool replacing it) while a refresh was out, and the process
  // ended before it came back: the new tokens went with it, and the pool's refresh token was
  // spent. They are kept in <pool>.unsaved-<pid>.json until a write takes them.
  const email = "kept-beside@x.test";
  const { path, entry } = await poolOf(email, { expires: Date.now() - 1000 });
  let answer;
  mock.setTokenMode({ until: new Promise((r) => (answer = r)), grant: "refresh_token" });
  const arrived = mock.waitFor("token");
  const code = `
    const lib = await import(${JSON.stringify(new URL("../index.mjs", import.meta.url).href)});
    const res = await lib.createPoolFetch({ path: process.argv[1] })(process.argv[2], { method: "POST", headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" }, body: "{}" });
    await res.text();
    const flushed = await lib.flushPool(process.argv[1]).then(() => "flushed", (e) => e.code);
    process.stdout.write(JSON.stringify({ status: res.status, flushed }));`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", code, path, messagesUrl(mock)], { env: process.env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const ended = new Promise((r) => child.on("close", r));
  await arrived;
  const aside = `${path}.away`;
  renameSync(path, aside);
  answer();
  assert.equal(await ended, 0, err);
  assert.deepEqual(JSON.parse(out), { status: 200, flushed: "POOL_IO" }, "told the tokens are not in the pool");
  const keptName = new RegExp(`^${basename(path).replaceAll(".", "\\.")}\\.unsaved-${child.pid}-\\d+\\.json$`);
  const keptFiles = readdirSync(dirname(path)).filter((n) => keptName.test(n));
  assert.equal(keptFiles.length, 1, readdirSync(dirname(path)).join(", "));
  const kept = join(dirname(path), keptFiles[0]);
  assert.equal(statSync(kept).mode & 0o777, 0o600);
  const live = mock.tokens(email).refresh;
  assert.notEqual(live, entry.refresh);
  renameSync(aside, path);
  assert.equal(account(path, email).refresh, entry.refresh, "the file back holds the spent token");
  await servedByKeptTokens(path, email, live);
  assert.equal(existsSync(kept), false, "and their file gone");
});

// Found by a review (2026-12-07, second): the new tokens went beside the pool only once the
// write had waited 10 s for the pool's lock; a process ended before then (killed, or Ctrl-C, whose
// exit waits 5 s) lost them, and the next one presented the spent token: the login revoked.
// And under a umask that takes the owner's read bit (0377) the kept file was made 0000: the next
// process could not read it and presented the spent token (found by a review, 2026-12-07, fourth).
for (const umask of [null, "0377"]) {
  test(`tokens refreshed while another writer holds the pool's lock are kept beside it (0600${umask ? `, under umask ${umask}` : ""}) before the write waits: the process killed then, the next takes them`, {
    skip: !flockAvailable,
  }, async () => {
    const email = `killed-writing${umask ?? ""}@x.test`;
    const { path, entry } = await poolOf(email, { expires: Date.now() - 1000 });
    const writer = await holdLock(`${path}.lock`);
    const arrived = mock.waitFor("token");
    const code = `
    const lib = await import(${JSON.stringify(new URL("../index.mjs", import.meta.url).href)});
    await lib.createPoolFetch({ path: process.argv[1] })(process.argv[2], { method: "POST", headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" }, body: "{}" });`;
    const argv = ["--input-type=module", "-e", code, path, messagesUrl(mock)];
    // `exec`: the shell becomes the runtime, so that the pid in the kept file's name is the child's.
    const child = umask
      ? spawn("sh", ["-c", `umask ${umask} && exec "$0" "$@"`, process.execPath, ...argv], { env: process.env, stdio: "ignore" })
      : spawn(process.execPath, argv, { env: process.env, stdio: "ignore" });
    const ended = new Promise((r) => child.on("close", (_, signal) => r(signal)));
    try {
      await arrived;
      const kept = () => readdirSync(dirname(path)).filter((n) => n.startsWith(`${basename(path)}.unsaved-${child.pid}-`));
      await until(() => kept().length === 1, "the new tokens kept beside the pool while the write waits", 8_000);
      assert.equal(statSync(join(dirname(path), kept()[0])).mode & 0o777, 0o600);
      child.kill("SIGKILL");
      assert.equal(await ended, "SIGKILL");
    } finally {
      child.kill("SIGKILL");
      await writer.release();
    }
    const live = mock.tokens(email).refresh;
    assert.notEqual(live, entry.refresh, "the endpoint rotated the token: the pool's is spent");
    await servedByKeptTokens(path, email, live);
  });
}

// And a refresh whose write does not wait leaves nothing beside the pool.
test("a refresh written at once leaves no file beside the pool", async () => {
  const email = "written-at-once@x.test";
  const { path } = await poolOf(email, { expires: Date.now() - 1000 });
  const res = await lib.createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(res.status, 200);
  await res.text();
  await lib.flushPool(path);
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh);
  assert.deepEqual(
    readdirSync(dirname(path)).filter((n) => n.includes(".unsaved-")),
    [],
  );
});

test("tokens a refresh could not save at first go to the account renamed meanwhile once the file can be written", async () => {
  const { path, entry } = await poolOf("renamed-unsaved@x.test", { expires: Date.now() - 1000 });
  const { answer, request } = await refreshHeld(path);
  // A person's edit, saved half-way: the refresh cannot write, and keeps the tokens.
  const good = readFileSync(path, "utf8");
  writeFileSync(path, good.slice(0, 20));
  answer();
  const res = await request;
  assert.equal(res.status, 200);
  await res.text();
  const live = mock.tokens("renamed-unsaved@x.test").refresh;
  assert.notEqual(live, entry.refresh);
  // The edit finished: the account renamed. The kept tokens are retried every 5 s.
  const fixed = JSON.parse(good);
  fixed.anthropic[0].email = "renamed-later@x.test";
  writeFileSync(path, JSON.stringify(fixed, null, 2));
  await until(() => account(path, "renamed-later@x.test")?.refresh === live, "the kept tokens written to the renamed account", 20_000);
  assert.equal(mock.stats().perFamily["renamed-unsaved@x.test"].revoked, false);
});

test("oauth-pool refresh waits for a pool whose lock another writer holds past the refresh's patience, instead of ending with the only copy of the new tokens", {
  skip: !flockAvailable,
}, async () => {
  const { path, entry } = await poolOf("cli-refresh@x.test");
  // An OpenCode stopped (Ctrl-Z) while it held the pool's lock, let go 12 s later (`fg`).
  const writer = await holdLock(`${path}.lock`);
  const cli = spawn(process.execPath, [CLI, "refresh", "cli-refresh@x.test", "--path", path], { env: process.env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  cli.stdout.on("data", (d) => (out += d));
  cli.stderr.on("data", (d) => (out += d));
  const ended = new Promise((r) => cli.on("exit", r));
  await pause(12_000);
  await writer.release();
  assert.equal(await ended, 0, out);
  assert.match(out, /cli-refresh@x\.test: refreshed/);
  const live = mock.tokens("cli-refresh@x.test").refresh;
  assert.notEqual(live, entry.refresh);
  assert.equal(account(path, "cli-refresh@x.test").refresh, live);
});

test("the refresh() export does not present a refresh token the pool spent: OAUTH_INVALID_GRANT, nothing sent, the pool's login intact", async () => {
  const { path, entry } = await poolOf("exported@x.test");
  assert.equal((await lib.refreshAccount("exported@x.test", path)).outcome, "refreshed");
  const calls = mock.stats().refreshCalls;
  await assert.rejects(lib.refresh(entry.refresh), (e) => e.code === "OAUTH_INVALID_GRANT" && !e.message.includes(entry.refresh));
  assert.equal(mock.stats().refreshCalls, calls, "nothing sent");
  assert.equal(mock.stats().perFamily["exported@x.test"].revoked, false);
  assert.equal((await lib.refreshAccount("exported@x.test", path)).outcome, "refreshed");
});

// Found by a review: the export checked the journal but recorded nothing of its own, so a second
// call, at once or later, presented the same token, and so did a pool holding it (its login
// lost to `invalid_grant`, and at a strict endpoint the script's new tokens with it).
test("a refresh token the refresh() export presented is presented by nobody after it: a second call, a concurrent one, or a pool holding it", async () => {
  const { path, entry } = await poolOf("exported-first@x.test");
  const calls = mock.stats().refreshCalls;
  const [first, second] = await Promise.allSettled([lib.refresh(entry.refresh), lib.refresh(entry.refresh)]);
  const got = [first, second].filter((r) => r.status === "fulfilled");
  assert.equal(got.length, 1, JSON.stringify([first.reason?.message, second.reason?.message]));
  const refused = [first, second].find((r) => r.status === "rejected").reason;
  assert.equal(refused.code, "OAUTH_INVALID_GRANT");
  assert.match(refused.message, /the library's refresh\(\)/);
  assert.equal(mock.stats().refreshCalls, calls + 1, "presented once");
  await assert.rejects(lib.refresh(entry.refresh), (e) => e.code === "OAUTH_INVALID_GRANT" && !e.message.includes(entry.refresh));
  // The pool holding the token the script spent says so, and presents nothing.
  await assert.rejects(
    lib.refreshAccount("exported-first@x.test", path),
    (e) => e.code === "OAUTH_INVALID_GRANT" && /the library's refresh\(\)/.test(e.message),
  );
  assert.equal(mock.stats().refreshCalls, calls + 1, "nothing more sent");
  assert.equal(mock.stats().perFamily["exported-first@x.test"].revoked, false, "the script's new tokens live");
});

/**
 * A token endpoint of the test's own: `answer(refreshToken, n)` gives the JSON body of the n-th
 * call (from 1), or `[status, body]`. Returns its URL, what was presented, and `close()`.
 */
async function tokenEndpoint(answer) {
  const { createServer } = await import("node:http");
  const presented = [];
  const server = createServer((req, res) => {
    let text = "";
    req.on("data", (c) => (text += c));
    req.on("end", () => {
      const token = JSON.parse(text).refresh_token;
      presented.push(token);
      const given = answer(token, presented.length);
      const [status, reply] = Array.isArray(given) ? given : [200, given];
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(reply));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}/v1/oauth/token`, presented, close: () => server.close() };
}

// Found by a review: the export recorded every success as the token spent, though an endpoint
// that hands the same refresh token back (or none, which keeps it) did not spend it: the next
// call with the token it had just handed back was refused for 30 days, and a pool holding that
// login was marked as needing a new login.
test("the refresh() export records a token spent only when the endpoint named a successor: one handed back, or left out, is presented again", async () => {
  const token = `${["sk", "ant", "ort01"].join("-")}-${"k".repeat(8)}-${Date.now()}`;
  for (const how of ["handed back", "left out"]) {
    const endpoint = await tokenEndpoint((presented, n) => ({
      access_token: `${["sk", "ant", "oat01"].join("-")}-access-${n}`,
      expires_in: 28_800,
      ...(how === "handed back" ? { refresh_token: presented } : {}),
    }));
    try {
      await withEnv({ OAUTH_POOL_TOKEN_URL: endpoint.url }, async () => {
        const first = await lib.refresh(`${token}-${how === "left out" ? "b" : "a"}`);
        assert.equal(first.refresh, `${token}-${how === "left out" ? "b" : "a"}`, how);
        const second = await lib.refresh(first.refresh);
        assert.equal(second.access, `${["sk", "ant", "oat01"].join("-")}-access-2`, `${how}: the same token again is presented`);
      });
      assert.equal(endpoint.presented.length, 2, how);
    } finally {
      endpoint.close();
    }
  }
  // A rotation whose successor is then refused spent the token all the same: it is not
  // presented a second time.
  const rotated = `${["sk", "ant", "ort01"].join("-")}-rotated-${Date.now()}`;
  const endpoint = await tokenEndpoint((presented) =>
    presented === rotated ? { refresh_token: `${rotated}-next` } : [400, { error: "invalid_grant", error_description: "refresh token revoked" }],
  );
  try {
    await withEnv({ OAUTH_POOL_TOKEN_URL: endpoint.url }, async () => {
      await assert.rejects(lib.refresh(rotated), (e) => e.code === "OAUTH_INVALID_GRANT");
      await assert.rejects(lib.refresh(rotated), (e) => e.code === "OAUTH_INVALID_GRANT" && /the library's refresh\(\)/.test(e.message));
    });
    assert.deepEqual(endpoint.presented, [rotated, `${rotated}-next`], "the spent token presented once");
  } finally {
    endpoint.close();
  }
});
