// The management side of the chaos test: until stdin closes, picks an action at random every
// 50-300 ms: setPriority, setEnabled off (and on again a moment later), resetCooldowns, a copy
// read with loadPool and saved back later with savePool, `oauth-pool list --json` and
// `oauth-pool status --json`. Ends with every account enabled, then prints one JSON line:
// counts per action, and every failure.
//   node chaos-manager.mjs <poolPath> <emails> <seed>
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { loadPool, resetCooldowns, savePool, setEnabled, setPriority } from "../../index.mjs";
import { seeded } from "./chaos-random.mjs";

const [path, emailsArg, seedArg] = process.argv.slice(2);
const emails = emailsArg.split(",");
const CLI = fileURLToPath(new URL("../../bin/oauth-pool.mjs", import.meta.url));
const { random, pick } = seeded(seedArg, 7);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = { counts: {}, failures: [], copies: [] };
const disabled = new Set();
const pending = new Set();

let running = true;
process.stdin.on("end", () => (running = false));
process.stdin.on("close", () => (running = false));
process.stdin.resume();

function cli(args) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI, ...args, "--json"], { env: { ...process.env, OAUTH_POOL_PATH: path }, timeout: 60_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`oauth-pool ${args.join(" ")}: ${err.message} ${stdout} ${stderr}`.slice(0, 500)));
      try {
        resolve(JSON.parse(stdout));
      } catch (e) {
        reject(new Error(`oauth-pool ${args.join(" ")} printed no JSON: ${stdout.slice(0, 200)} (${e.message})`));
      }
    });
  });
}

const actions = {
  priority: () => setPriority(pick(emails), Math.floor(random() * 4), path),
  disable: async () => {
    if (disabled.size >= 2) return;
    const email = pick(emails.filter((e) => !disabled.has(e)));
    await setEnabled(email, false, path);
    disabled.add(email);
    const later = (async () => {
      await sleep(300 + random() * 1500);
      await setEnabled(email, true, path);
      disabled.delete(email);
    })().catch((err) => out.failures.push({ action: "enable", code: err?.code, message: String(err?.message).slice(0, 300) }));
    pending.add(later);
    later.finally(() => pending.delete(later));
  },
  reset: () => resetCooldowns(path),
  copy: async () => {
    // A script's read-modify-write with a stale copy: the newer tokens in the file must stay.
    const loadedAt = Date.now();
    const copy = await loadPool(path);
    await sleep(random() * 500);
    copy.anthropic[Math.floor(random() * copy.anthropic.length)].chaosNote = `note-${Date.now()}`;
    await savePool(copy, path);
    out.copies.push([loadedAt, Date.now()]);
  },
  list: async () => {
    const list = await cli(["list"]);
    const n = (Array.isArray(list) ? list : (list.accounts ?? [])).length;
    if (n !== emails.length) throw new Error(`list showed ${n} accounts: ${JSON.stringify(list).slice(0, 300)}`);
  },
  status: () => cli(["status"]),
};

while (running) {
  const name = pick(Object.keys(actions));
  try {
    await actions[name]();
    out.counts[name] = (out.counts[name] ?? 0) + 1;
  } catch (err) {
    out.failures.push({ action: name, code: err?.code, message: String(err?.message ?? err).slice(0, 500) });
  }
  await sleep(50 + random() * 250);
}
await Promise.all(pending);
for (const email of emails) {
  try {
    await setEnabled(email, true, path);
  } catch (err) {
    out.failures.push({ action: "enable at the end", code: err?.code, message: String(err?.message).slice(0, 300) });
  }
}
process.stdout.write(`${JSON.stringify(out)}\n`);
