// Per-request cost of the pool fetch under Bun against Bun's own fetch, with several variants
// of the pool (builds of the addon, versions of lib/) loaded side by side in ONE process and run
// in alternating rounds: on a small shared machine the least noisy comparison there is (separate
// runs of `npm run bench` move by tens of percent between themselves).
//   node_modules/.bin/bun bench/bun-ab.mjs [--variant=<label>:<rev>:<addon.node>]... [options]
//   <rev>: a git revision whose index.mjs, plugin.mjs and lib/ the variant runs, or "." for the
//          working tree; <addon.node>: the addon it loads (default: the working tree's build).
//          Without --variant: the working tree with its build.
//   --rounds=30 --per-round=200 --warmup=300 --shapes=get,post --copies=2
//   copies: each variant is loaded this many times, in mirrored order (A B B A), its copies'
//   requests counted together: where a copy was loaded moves its figures by as much as the
//   changes measured (the same build loaded twice: 3-7 µs apart, the later one faster; the
//   first copy loaded up to 10 µs slower than the others, so a first copy is loaded and left
//   unmeasured).
//   shapes: "get" a small GET (the bench's small request), "post" a request as OpenCode sends
//   it (POST, 8 headers, a 2.5 KB JSON body). Both answered with a small JSON 200.
// Prints, per shape, each variant's and Bun's fetch's median (all requests) and median of the
// round medians, and the ratio of each to Bun's fetch; one JSON line at the end.
import { spawn, spawnSync } from "node:child_process";
import { cpSync, copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createInterface } from "node:readline";
import { tempDir } from "../__tests__/helpers/temp.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const triple = "linux-x64-gnu";
const argv = process.argv.slice(2);
const opt = (name, dflt) => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
const variantSpecs = argv.filter((a) => a.startsWith("--variant=")).map((a) => a.slice(10));
if (!variantSpecs.length) variantSpecs.push(`current:.:${join(root, `oauth-pool.${triple}.node`)}`);
/** A mistyped option is refused before anything is loaded (it failed midway, or measured nothing). */
function refuse(why) {
  console.error(`bench/bun-ab.mjs: ${why}`);
  process.exit(2);
}
for (const a of argv) {
  const name = /^--([a-z-]+)=/.exec(a)?.[1];
  if (!["variant", "rounds", "per-round", "warmup", "shapes", "copies"].includes(name ?? "")) refuse(`unknown argument ${a}`);
}
const whole = (name, dflt, least) => {
  const n = Number(opt(name, dflt));
  if (!Number.isInteger(n) || n < least) refuse(`--${name}: ${opt(name, dflt)} is not a whole number of at least ${least}`);
  return n;
};
const rounds = whole("rounds", 30, 1);
const perRound = whole("per-round", 200, 1);
const warmup = whole("warmup", 300, 0);
const shapes = opt("shapes", "get,post").split(",");
for (const shape of shapes) if (!["get", "post"].includes(shape)) refuse(`--shapes: ${shape} is not get or post`);
const copies = whole("copies", 2, 1);
for (const spec of variantSpecs) if (!/^[^:#/]+(:[^:]*(:.+)?)?$/.test(spec)) refuse(`--variant=${spec}: give <label>:<git rev>:<addon.node>`);

const scratch = tempDir("oauth-pool-bun-ab-");
/** A copy of the package's JavaScript at `rev` with `addon` as its local build. */
function materialize(label, rev, addon) {
  const dir = join(scratch, label);
  mkdirSync(dir, { recursive: true });
  if (rev === ".") {
    for (const f of ["index.mjs", "plugin.mjs", "package.json", "lib"]) cpSync(join(root, f), join(dir, f), { recursive: true });
  } else {
    const archive = spawnSync("git", ["-C", root, "archive", rev, "index.mjs", "plugin.mjs", "package.json", "lib"], { maxBuffer: 1 << 28 });
    if (archive.status !== 0) throw new Error(`git archive ${rev}: ${archive.stderr}`);
    const untar = spawnSync("tar", ["-x", "-C", dir], { input: archive.stdout });
    if (untar.status !== 0) throw new Error(`tar: ${untar.stderr}`);
  }
  copyFileSync(resolve(addon), join(dir, `oauth-pool.${triple}.node`));
  return dir;
}

const server = spawn("node", [join(root, "__tests__/helpers/mock-anthropic.mjs")], { stdio: ["pipe", "pipe", "inherit"] });
const { url } = await new Promise((res) => createInterface({ input: server.stdout }).once("line", (l) => res(JSON.parse(l))));
process.env.OAUTH_POOL_API_URL = url;
process.env.OAUTH_POOL_TOKEN_URL = `${url}/v1/oauth/token`;
process.env.OAUTH_POOL_JITTER_MS = "0";

const impls = { bun: globalThis.fetch.bind(globalThis) };
/** Which variant each loaded copy is. */
const variantOf = { bun: "bun" };
const loads = [];
for (let c = 0; c < copies; c++) {
  const pass = variantSpecs.map((spec) => [spec, c]);
  loads.push(...(c % 2 ? pass.reverse() : pass));
}
loads.unshift([variantSpecs[0], -1]);
for (const [spec, c] of loads) {
  const [variant, rev = ".", addon = join(root, `oauth-pool.${triple}.node`)] = spec.split(":");
  // The unmeasured first copy has a label, and so a pool file and accounts, of its own.
  const label = c < 0 ? "unmeasured" : copies > 1 ? `${variant}#${c + 1}` : variant;
  variantOf[label] = variant;
  const dir = materialize(label, rev, addon);
  const mod = await import(pathToFileURL(join(dir, "index.mjs")).href);
  const poolPath = join(scratch, `${label}-pool.json`);
  // One pool file per variant, with accounts of its own: variants never share a store.
  const anthropic = [];
  for (const email of [`${label}-a@example.com`, `${label}-b@example.com`]) {
    const t = await (await fetch(`${url}/__mock/account`, { method: "POST", body: JSON.stringify({ email }) })).json();
    anthropic.push({ email, access: t.access, refresh: t.refresh, expires: t.expires, status: "idle", rateLimitUntil: null });
  }
  await mod.savePool({ anthropic }, poolPath);
  if (c < 0) {
    const decoy = mod.createPoolFetch({ path: poolPath });
    for (let i = 0; i < warmup; i++) await (await decoy(`${url}/bench/small`)).text();
    continue;
  }
  impls[label] = mod.createPoolFetch({ path: poolPath });
}
const names = Object.keys(impls);

const body = JSON.stringify({
  model: "claude-sonnet-4-5",
  max_tokens: 32000,
  stream: false,
  system: [{ type: "text", text: "You are a coding assistant. ".repeat(20) }],
  messages: [{ role: "user", content: [{ type: "text", text: "Explain this function. ".repeat(80) }] }],
}).slice(0, 2560);
const requests = {
  get: () => [`${url}/bench/small`, undefined],
  post: () => [
    `${url}/bench/small`,
    {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/json",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "user-agent": "opencode/1.0 ai-sdk/anthropic",
        "x-app": "cli",
        "x-stainless-retry-count": "0",
        "x-stainless-timeout": "600",
      },
      body,
    },
  ],
};

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const f = (x) => (x * 1000).toFixed(1);

const report = {};
for (const shape of shapes) {
  const make = requests[shape];
  const one = async (name) => {
    const t0 = performance.now();
    const res = await impls[name](...make());
    await res.text();
    if (res.status !== 200) throw new Error(`${name}: status ${res.status}`);
    return performance.now() - t0;
  };
  for (const name of names) for (let i = 0; i < warmup; i++) await one(name);
  const all = Object.fromEntries(names.map((n) => [n, []]));
  const roundMedians = Object.fromEntries(names.map((n) => [n, []]));
  for (let round = 0; round < rounds; round++) {
    // Rotate the order, so no variant always runs right after another.
    const order = names.map((_, i) => names[(i + round) % names.length]);
    for (const name of order) {
      const xs = [];
      for (let i = 0; i < perRound; i++) xs.push(await one(name));
      all[name].push(...xs);
      roundMedians[name].push(median(xs));
    }
  }
  // A variant's copies counted together.
  for (const name of names) {
    if (variantOf[name] === name) continue;
    all[variantOf[name]] ??= [];
    roundMedians[variantOf[name]] ??= [];
    all[variantOf[name]].push(...all[name]);
    roundMedians[variantOf[name]].push(...roundMedians[name]);
  }
  const base = median(all.bun);
  const baseRounds = median(roundMedians.bun);
  console.log(`\n${shape}: ${rounds} rounds of ${perRound}, medians in µs`);
  console.log("| fetch | p50 | ratio | median of round p50s | ratio | added p50 |");
  console.log("| --- | --- | --- | --- | --- | --- |");
  report[shape] = {};
  for (const name of Object.keys(all)) {
    const p50 = median(all[name]);
    const rp50 = median(roundMedians[name]);
    report[shape][name] = { p50Ms: p50, roundP50Ms: rp50, ratio: p50 / base, roundRatio: rp50 / baseRounds };
    console.log(`| ${name} | ${f(p50)} | ${(p50 / base).toFixed(3)}x | ${f(rp50)} | ${(rp50 / baseRounds).toFixed(3)}x | +${f(p50 - base)} |`);
  }
}
console.log(JSON.stringify(report));
server.kill("SIGTERM");
rmSync(scratch, { recursive: true, force: true });
process.exit(0);
