// Two versions of the package on one pool file at once: an npm update while OpenCode sessions
// started before it keep the version they loaded (for days), and a CLI of one version beside a
// plugin of another. No older build runs here (CI cannot build one): the previous release's
// file is a fixture recorded from that build (fixtures/previous-release-pool.json, see the
// fixtures README), and a later format is a file that says so in its `version`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createPoolFetch, flushPool, loadPool, savePool } from "../index.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { useMock, tempPoolPath, readPool, messagesUrl, body, jsonHeaders } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const CLI = fileURLToPath(new URL("../bin/oauth-pool.mjs", import.meta.url));
const home = tempDir("oauth-pool-versions-");
const mock = useMock({ env: { OAUTH_POOL_JITTER_MS: "0" } });

function cli(path, ...args) {
  const r = spawnSync(process.execPath, [CLI, ...args, "--path", path], { env: { ...process.env, HOME: home }, encoding: "utf8" });
  return { code: r.status, out: r.stdout + r.stderr };
}

const ask = (f, model = "claude-sonnet-4-5") => f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body({ model }) });

/** Replaces the pool file at once, as another process's write does (a rename over it). */
function replaceFile(path, text) {
  writeFileSync(`${path}.next`, text, { mode: 0o600 });
  renameSync(`${path}.next`, path);
}

test("a pool of a later format: a running process refuses it (POOL_CORRUPT, saying to upgrade) and writes nothing, nor does the CLI", async () => {
  const path = tempPoolPath();
  const t = mock.addAccount("later@x.test");
  await savePool(
    { anthropic: [{ email: "later@x.test", refresh: t.refresh, access: t.access, expires: t.expires, status: "idle", rateLimitUntil: null }] },
    path,
  );
  await savePool(await loadPool(path), path); // a .bak of this format beside it, as after any two writes
  const f = createPoolFetch({ path });
  const first = await ask(f);
  assert.equal(first.status, 200);
  await first.text(); // its bookkeeping is pending, to be written later

  // A newer version (updated by npm while this session runs) writes the pool in its format 2.
  const later = readPool(path);
  later.version = 2;
  later.anthropic[0].futureShape = { of: "format 2" };
  const text = `${JSON.stringify(later, null, 2)}\n`;
  replaceFile(path, text);

  // This version used to read it as its own format and write it back so, the first time
  // bookkeeping or a refresh was written, undoing what the newer one meant by it.
  await assert.rejects(loadPool(path), (e) => e.code === "POOL_CORRUPT" && /pool format 2/.test(e.message) && /upgrade/.test(e.message));
  await assert.rejects(ask(f), (e) => e.code === "POOL_CORRUPT");
  await assert.rejects(flushPool(path), (e) => e.code === "POOL_CORRUPT");
  for (const args of [["list"], ["enable", "later@x.test"], ["priority", "later@x.test", "2"], ["reset-cooldowns"]]) {
    const r = cli(path, ...args);
    assert.equal(r.code, 1, `${args.join(" ")}: ${r.out}`);
    assert.match(r.out, /POOL_CORRUPT.*pool format 2.*upgrade/s, args.join(" "));
    assert.doesNotMatch(r.out, /restore it with `cp |move it aside \(/, "never advice that drops the newer version's file");
  }
  const doctor = cli(path, "doctor", "--json");
  const checks = JSON.parse(doctor.out.split("\n")[0]).checks;
  assert.match(checks.find((c) => c.name === "parse").message, /pool format 2.*upgrade/s);
  assert.doesNotMatch(checks.find((c) => c.name === "backup").message, /cp /, "the older .bak is not to be restored over it");
  assert.equal(readFileSync(path, "utf8"), text, "the newer version's file is byte for byte as it wrote it");
});

/**
 * The previous release's file (recorded from its build after a day's kinds of writes: usage, a
 * model's window exhausted, a refresh, a 429, priority, reserve, disable and enable) moved to
 * now, with live tokens of the mock and fields of a version later than this one added.
 */
function previousRelease() {
  const raw = readFileSync(new URL("./fixtures/previous-release-pool.json", import.meta.url), "utf8");
  const recorded = JSON.parse(raw)._recordedAt;
  const delta = Date.now() - recorded;
  const day = (d) => new Date(Date.parse(`${d}T12:00:00Z`) + delta).toISOString().slice(0, 10);
  const moved = (v) => {
    if (typeof v === "number" && v > 1.7e12 && v < 2.1e12) return v + delta;
    if (typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v)) return new Date(Date.parse(v) + delta).toISOString();
    if (Array.isArray(v)) return v.map(moved);
    if (v && typeof v === "object")
      return Object.fromEntries(
        Object.entries(v).map(([k, x]) => [/^\d{13}$/.test(k) ? String(Number(k) + delta) : /^\d{4}-\d\d-\d\d$/.test(k) ? day(k) : k, moved(x)]),
      );
    return v;
  };
  const pool = moved(JSON.parse(raw));
  delete pool._recordedAt;
  for (const a of pool.anthropic) {
    a.email = a.email.replace("example.com", "prev.test");
    const t = mock.addAccount(a.email);
    Object.assign(a, { refresh: t.refresh, access: t.access, expires: t.expires });
    a.zzLater = { kept: a.email };
    for (const w of Object.values(a.limits.windows)) w.zzLater = 1;
    for (const bucket of Object.values(a.usage.days)) for (const counts of Object.values(bucket)) counts.zzLater = 2;
    a.usage.zzLater = 3;
    a.limits.zzLater = 4;
  }
  pool._oauthPool.zzLater = 5;
  pool.zzLater = [6];
  return pool;
}

/** Every `zzLater` field and where it sits. */
function laterFields(v, at = "") {
  if (!v || typeof v !== "object") return [];
  // The pool's own record (`_oauthPool`) is moved into a list of one object when written: what
  // it held stays, one level down.
  const path = (k) => (at === "/_oauthPool" && k === "0" ? at : `${at}/${k}`);
  return Object.entries(v).flatMap(([k, x]) => (k === "zzLater" ? [`${at}/${k}=${JSON.stringify(x)}`] : laterFields(x, path(k))));
}

test("the previous release's pool file: its cooldowns are honoured, and this version's writes keep its fields and a later version's", async () => {
  const path = tempPoolPath();
  const pool = previousRelease();
  await savePool(pool, path);
  const later = laterFields(readPool(path));
  assert.deepEqual(later, laterFields(pool));
  const kept = (what) => assert.deepEqual(laterFields(readPool(path)), later, `after ${what}`);
  const [alice, bob, carol] = ["alice@prev.test", "bob@prev.test", "carol@prev.test"];

  // alice rests for sonnet models (its 7d_sonnet window), bob rests altogether (a 429): the
  // previous release wrote both; sonnet goes to carol, haiku anywhere but bob.
  const f = createPoolFetch({ path });
  const sonnet = await ask(f);
  assert.equal(sonnet.poolAccount, carol);
  await sonnet.text();
  const haiku = await ask(f, "claude-haiku-4-5");
  assert.notEqual(haiku.poolAccount, bob);
  await haiku.text();
  await flushPool(path);
  kept("usage and windows written");

  // A 429 (a cooldown written), then a refresh of an expired token.
  mock.script(carol, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  const refused = await ask(f);
  assert.equal(refused.status, 429, "every account rests for sonnet models now");
  await refused.text();
  await flushPool(path);
  kept("a cooldown");
  const now = readPool(path);
  now.anthropic.find((a) => a.email === alice).expires = Date.now() - 1000;
  await savePool(now, path);
  const refreshed = await ask(f, "claude-haiku-4-5");
  assert.equal(refreshed.poolAccount, alice);
  await refreshed.text();
  await flushPool(path);
  assert.ok(readPool(path).anthropic.find((a) => a.email === alice).expires > Date.now(), "refreshed");
  kept("a refresh");

  for (const args of [
    ["priority", bob, "1"],
    ["disable", carol],
    ["enable", carol],
    ["reserve", alice, "0.1"],
  ]) {
    assert.equal(cli(path, ...args).code, 0, args.join(" "));
    kept(args.join(" "));
  }
  const written = readPool(path);
  const by = (e) => written.anthropic.find((a) => a.email === e);
  assert.equal(by(carol).reserve, 0.2, "the previous release's reserve");
  assert.ok(by(alice).modelCooldowns.sonnet > Date.now(), "its model rest");
  assert.ok(by(bob).rateLimitUntil > Date.now(), "its cooldown");
  assert.equal(written.version, undefined);
  // Its own fields: each account's, what it had counted (usage only grows) and when it was added.
  for (const was of pool.anthropic) {
    const is = by(was.email);
    assert.deepEqual(
      Object.keys(was).filter((k) => !(k in is)),
      [],
      `${was.email}: the previous release's fields are all there`,
    );
    assert.equal(is.added, was.added, `${was.email}: added`);
    for (const [day, models] of Object.entries(was.usage.days))
      for (const [model, counts] of Object.entries(models))
        for (const [k, n] of Object.entries(counts))
          if (k !== "zzLater")
            assert.ok(is.usage.days[day]?.[model]?.[k] >= n, `${was.email} ${day} ${model} ${k}: ${is.usage.days[day]?.[model]?.[k]} < ${n}`);
  }
});
