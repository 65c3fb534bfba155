// What other writers leave in the pool file (the opencode-aidevops plugin and its shell helpers,
// a hand edit, Python's json): one email twice, numbers JSON spells its own ways, a status in
// another case, their sections around ours. Each is read as it says, or kept and reported.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import * as lib from "../index.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { useMock, tempPoolPath, readPool, oauthEntry, messagesUrl, body, jsonHeaders } from "./helpers/pool-env.mjs";

const mock = useMock();

function writeRaw(text) {
  const path = tempPoolPath();
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, text, { mode: 0o600 });
  return path;
}

async function send(f) {
  const res = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  await res.text();
  return res;
}

test("one email in two entries: the second is kept and reported, and a disabled first one's token is never sent in its turn", async () => {
  // The first entry's tokens are family A's, the second's family B's; the mock tells them apart.
  const first = { ...oauthEntry(mock, "content-dup-a@x.test"), email: "content-dup@x.test", enabled: false };
  const second = { ...oauthEntry(mock, "content-dup-b@x.test"), email: "content-dup@x.test", priority: 5, theirs: { n: 1 } };
  const other = oauthEntry(mock, "content-other@x.test");
  const path = writeRaw(JSON.stringify({ anthropic: [first, second, other] }, null, 2));
  const f = lib.createPoolFetch({ path });
  mock.clearRequests();
  const res = await send(f);
  assert.deepEqual(
    mock.requests.map((r) => r.email),
    ["content-other@x.test"],
    "the disabled entry's credential was sent as the second entry's turn",
  );
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, "content-other@x.test");
  const listed = await lib.listAccounts(path);
  assert.equal(listed[1].status, "invalid", JSON.stringify(listed[1]));
  assert.equal(listed[1].email, "content-dup@x.test");
  assert.match(listed[1].lastError, /second entry for this email.*#0/);
  await lib.setPriority("content-other@x.test", 2, path);
  await lib.flushPool(path);
  const after = readPool(path);
  assert.deepEqual(after.anthropic[1], second, "kept as it was written");
  assert.equal(after.anthropic[0].refresh, first.refresh);
  assert.equal(after.anthropic[0].enabled, false);
  // Named by its index, it goes; the account stays.
  assert.equal(await lib.removeAccount("#1", path), 1);
  assert.equal(readPool(path).anthropic[0].refresh, first.refresh);
});

test("numbers written as 1.0, 1e2 or -0 are the whole numbers they say, and a status in another case is read", async () => {
  const low = oauthEntry(mock, "content-low@x.test");
  const high = oauthEntry(mock, "content-high@x.test");
  const zero = oauthEntry(mock, "content-zero@x.test");
  const off = oauthEntry(mock, "content-off@x.test");
  const entry = (e, fields) =>
    `{"email":${JSON.stringify(e.email)},"refresh":${JSON.stringify(e.refresh)},"access":${JSON.stringify(e.access)},"expires":${e.expires}${fields}}`;
  const path = writeRaw(
    `{"anthropic":[${[
      entry(low, `,"priority":1.0,"status":"idle"`),
      entry(high, `,"priority":1e2,"rateLimitUntil":null`),
      entry(zero, `,"priority":-0`),
      entry(off, `,"priority":1000,"status":"Disabled"`),
    ].join(",")}]}\n`,
  );
  const listed = Object.fromEntries((await lib.listAccounts(path)).map((a) => [a.email, a]));
  assert.deepEqual(
    Object.values(listed).map((a) => [a.email, a.status, a.priority]),
    [
      ["content-low@x.test", "idle", 1],
      ["content-high@x.test", "idle", 100],
      ["content-zero@x.test", "idle", 0],
      ["content-off@x.test", "disabled", 1000],
    ],
  );
  const f = lib.createPoolFetch({ path });
  mock.clearRequests();
  const res = await send(f);
  assert.equal(res.poolAccount, "content-high@x.test", "the highest priority of those enabled");
  assert.deepEqual(
    mock.requests.map((r) => r.email),
    ["content-high@x.test"],
  );
  await lib.setEnabled("content-off@x.test", true, path);
  assert.equal(readPool(path).anthropic[3].status, "idle", "enabled again");
});

test("other writers' sections keep their place in the file through our writes, and so do their fields in an account", async () => {
  const a = oauthEntry(mock, "content-order-a@x.test");
  const b = oauthEntry(mock, "content-order-b@x.test", { expired: true });
  Object.assign(b, { refreshBackoffUntil: Date.now() - 60_000, authRefreshFailures: 0, zz: 1 });
  const raw = {
    openai: [{ email: "o@x.test", refresh: "fake-openai-refresh" }],
    _pending_anthropic: { added: "2026-08-21T09:05:00.000Z" },
    anthropic: [a, b],
    lastFailover: { at: Date.now() - 1000, from: "x", to: "y", reason: "old" },
    cursor: [],
    google: [{ id: 1 }],
  };
  const path = writeRaw(JSON.stringify(raw, null, 2));
  await lib.setPriority("content-order-a@x.test", 3, path);
  assert.deepEqual(Object.keys(readPool(path)), Object.keys(raw));
  // A failover from a to b (b's token refreshed on the way) moves the old lastFailover.
  mock.script("content-order-a@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  const res = await send(lib.createPoolFetch({ path }));
  assert.equal(res.poolAccount, "content-order-b@x.test");
  await lib.flushPool(path);
  const after = readPool(path);
  assert.deepEqual(Object.keys(after), ["openai", "_pending_anthropic", "anthropic", "cursor", "google", "_oauthPool"]);
  assert.deepEqual(after.openai, raw.openai);
  assert.deepEqual(after.google, raw.google);
  const fields = Object.keys(after.anthropic[1]);
  assert.ok(!fields.includes("refreshBackoffUntil"), "spent with the refresh");
  assert.ok(fields.indexOf("authRefreshFailures") < fields.indexOf("zz"), fields.join());
});

test("a top-level lastFailover of another writer's shape is left where it is by a failover; ours goes under _oauthPool", async () => {
  for (const theirs of ["yesterday", { at: "2026-08-21", by: "aidevops" }, { note: "kept" }]) {
    const tag = Math.random().toString(36).slice(2, 8);
    const a = oauthEntry(mock, `content-lf-a-${tag}@x.test`);
    const b = oauthEntry(mock, `content-lf-b-${tag}@x.test`);
    const path = writeRaw(JSON.stringify({ anthropic: [a, b], lastFailover: theirs, cursor: [] }));
    mock.script(a.email, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
    const res = await send(lib.createPoolFetch({ path }));
    assert.equal(res.poolAccount, b.email);
    await lib.flushPool(path);
    const after = readPool(path);
    assert.deepEqual(after.lastFailover, theirs, "another writer's section is kept as it was");
    assert.deepEqual(Object.keys(after).slice(0, 3), ["anthropic", "lastFailover", "cursor"]);
    assert.equal(after._oauthPool[0].lastFailover.from, a.email);
    assert.equal(after._oauthPool[0].lastFailover.to, b.email);
  }
});

test("numbers in other writers' fields: 64-bit integers come back exact through a write, beyond them and exponent forms as doubles", async () => {
  const a = oauthEntry(mock, "content-numbers@x.test");
  const entry = JSON.stringify({ ...a, past53: 1 }).replace('"past53":1', '"past53":9007199254740993,"u64":18446744073709551615,"i64":-9223372036854775808');
  const top = '"counter":12345678901234567890,"beyond":18446744073709551616,"below":-9223372036854775809,"exp":1e2';
  const path = writeRaw(`{"anthropic":[${entry}],${top}}`);
  await lib.setPriority(a.email, 2, path);
  const text = readFileSync(path, "utf8").replace(/\s+/g, "");
  for (const kept of ['"past53":9007199254740993', '"u64":18446744073709551615', '"i64":-9223372036854775808', '"counter":12345678901234567890']) {
    assert.ok(text.includes(kept), `${kept} kept exact: ${text}`);
  }
  for (const [k, v] of [
    ["beyond", 2 ** 64],
    ["below", -(2 ** 63)],
    ["exp", 100],
  ]) {
    assert.equal(JSON.parse(text)[k], v, k);
  }
  assert.ok(text.includes('"exp":100.0'), text);
});

test("decimals another writer keeps in the pool come back exact through a write (one in ten was a last digit off)", async () => {
  const a = oauthEntry(mock, "content-decimals@x.test");
  // Doubles as JavaScript writes them: the shortest text that reads back as the same double.
  const values = [0.9291430417858801, 1.5e-300, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, -2.2250738585072014e-308];
  for (let i = 0; i < 2000; i++) values.push(Math.random() * 10 ** ((i % 40) - 20));
  const path = writeRaw(JSON.stringify({ anthropic: [{ ...a, costs: values }], otherTool: { values } }));
  await lib.setPriority(a.email, 2, path);
  const after = JSON.parse(readFileSync(path, "utf8"));
  const changed = (back) => values.filter((v, i) => back[i] !== v);
  assert.deepEqual(changed(after.otherTool.values), [], "another writer's section");
  assert.deepEqual(changed(after.anthropic[0].costs), [], "an account's field the pool does not name");
  assert.deepEqual(changed((await lib.loadPool(path)).otherTool.values), [], "loadPool");
});

test("loadPool gives integers past 2^53 as numbers, as JSON.parse does: the pool can be printed and saved back", async () => {
  const a = oauthEntry(mock, "content-bigint@x.test");
  const entry = JSON.stringify({ ...a, past53: 1 }).replace('"past53":1', '"past53":9007199254740993,"u64":18446744073709551615,"i64":-9223372036854775808');
  const raw = `{"version":1,"anthropic":[${entry}],"counter":12345678901234567890,"nested":{"list":[18446744073709551615]}}`;
  const path = writeRaw(raw);
  const parsed = JSON.parse(raw);
  const numbers = (p) => [p.anthropic[0].past53, p.anthropic[0].u64, p.anthropic[0].i64, p.counter, p.nested.list[0]];
  const pool = await lib.loadPool(path);
  assert.deepEqual(numbers(pool), numbers(parsed), "the values JSON.parse reads, nothing a BigInt");
  assert.doesNotThrow(() => JSON.stringify(pool), "a loaded pool can be printed");
  await lib.savePool(pool, path);
  assert.deepEqual(numbers(await lib.loadPool(path)), numbers(parsed), "saved back as loaded");
});

test('a "__proto__" key in the pool file stays a key: loadPool gives plain accounts, savePool takes them back and keeps it', async () => {
  // Set on the objects the addon built, it became the account's prototype: the account looked as
  // if it held the fields under it, was no plain object, and savePool refused the pool just loaded.
  const a = oauthEntry(mock, "content-proto@x.test");
  const ownProto = (o) => Object.getOwnPropertyDescriptor(o, "__proto__")?.value;
  const entry = JSON.stringify(a).replace(/}$/, ',"__proto__":{"enabled":false,"priority":99}}');
  const raw = `{"version":1,"anthropic":[${entry}],"__proto__":{"anthropic":[]}}`;
  const path = writeRaw(raw);
  const pool = await lib.loadPool(path);
  const loaded = pool.anthropic[0];
  assert.equal(Object.getPrototypeOf(loaded), Object.prototype, "a plain account");
  assert.equal(Object.getPrototypeOf(pool), Object.prototype, "a plain pool");
  assert.deepEqual(ownProto(loaded), { enabled: false, priority: 99 }, "an own key, as JSON.parse gives it");
  assert.equal(loaded.enabled, undefined, "nothing inherited from it");
  assert.equal(loaded.priority, a.priority);
  loaded.priority = 4;
  await lib.savePool(pool, path);
  const stored = JSON.parse(readFileSync(path, "utf8"));
  assert.deepEqual(ownProto(stored.anthropic[0]), { enabled: false, priority: 99 }, "kept in the file");
  assert.deepEqual(ownProto(stored), { anthropic: [] });
  assert.equal(stored.anthropic[0].priority, 4, "the change written");
  const accounts = await lib.listAccounts(path);
  assert.equal(accounts.find((x) => x.email === "content-proto@x.test")?.enabled, true, "the account is not disabled by it");
});

test("a pool file past 32 MB (a dump or log written over it) is refused with POOL_CORRUPT and kept as it is, by reads, writes and requests", async () => {
  const a = oauthEntry(mock, "content-huge@x.test");
  const path = writeRaw(JSON.stringify({ anthropic: [a] }));
  truncateSync(path, 33 * 1024 * 1024);
  const before = statSync(path);
  await assert.rejects(lib.loadPool(path), (e) => e.code === "POOL_CORRUPT" && /bytes/.test(e.message));
  await assert.rejects(lib.setPriority(a.email, 2, path), (e) => e.code === "POOL_CORRUPT");
  await assert.rejects(send(lib.createPoolFetch({ path })), (e) => e.code === "POOL_CORRUPT");
  const after = statSync(path);
  assert.deepEqual([after.size, after.mtimeMs, after.ino], [before.size, before.mtimeMs, before.ino]);
  assert.ok(!existsSync(`${path}.bak`), "no .bak made from it");
});

test("a message another JavaScript writer cut inside an emoji (a lone surrogate escape) does not make the whole pool unreadable", async () => {
  const a = oauthEntry(mock, "content-cut-a@x.test");
  const b = oauthEntry(mock, "content-cut-b@x.test");
  // What JSON.stringify writes for a string sliced between the two halves of a character pair.
  const theirs = { ...b, lastError: "quota 😀".slice(0, 7), note: "\udc00 ok" };
  const path = writeRaw(JSON.stringify({ anthropic: [a, theirs], openai: [] }));
  assert.match(readFileSync(path, "utf8"), /\\ud83d"/);
  const pool = await lib.loadPool(path);
  assert.deepEqual(
    pool.anthropic.map((x) => x.email),
    [a.email, b.email],
  );
  assert.equal(pool.anthropic[1].lastError, "quota \ufffd");
  const res = await send(lib.createPoolFetch({ path }));
  assert.equal(res.status, 200);
  await lib.setPriority(b.email, 2, path);
  const after = readPool(path);
  assert.equal(after.anthropic[1].lastError, "quota \ufffd", "read as a UTF-8 encoder writes it");
  assert.equal(after.anthropic[1].note, "\ufffd ok");
  assert.equal(after.anthropic[1].refresh, b.refresh, "its tokens kept");
});

test("an expires written in seconds is read once as milliseconds, and a tiny one stays what it was through every write", async () => {
  const tiny = { ...oauthEntry(mock, "content-tiny@x.test"), expires: 5, rateLimitUntil: 7 };
  const seconds = { ...oauthEntry(mock, "content-seconds@x.test"), expires: 1_700_000_000 };
  const path = writeRaw(JSON.stringify({ anthropic: [tiny, seconds] }));
  for (let i = 0; i < 3; i++) await lib.savePool(await lib.loadPool(path), path);
  const [a, b] = readPool(path).anthropic;
  // Read as seconds each time, 5 became 5e12 in two round trips: a spent token good until 2128.
  assert.equal(a.expires, 5);
  assert.equal(a.rateLimitUntil, 7);
  assert.equal(b.expires, 1_700_000_000_000);
});
