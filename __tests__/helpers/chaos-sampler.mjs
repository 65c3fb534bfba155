// Reads the pool file with loadPool every ~20 ms until stdin closes, and prints one JSON line:
// how many reads, and every read that was not a clean pool with all `emails` (argv[3], comma
// separated), each OAuth account holding a refresh and an access token.
//   node chaos-sampler.mjs <poolPath> <emails>
import { loadPool } from "../../index.mjs";

const [path, emailsArg] = process.argv.slice(2);
const emails = emailsArg.split(",");
const out = { reads: 0, errors: [] };
// Refresh tokens each account has held, in order: one that comes back after another replaced it
// is a spent token written back (the next refresh presents it again).
const seen = new Map(); // email -> Set of refresh tokens seen
const current = new Map(); // email -> refresh token at the last read
let running = true;
process.stdin.on("end", () => (running = false));
process.stdin.on("close", () => (running = false));
process.stdin.resume();
while (running) {
  try {
    const pool = await loadPool(path);
    out.reads++;
    const list = pool.anthropic ?? [];
    for (const email of emails) {
      const a = list.find((x) => x?.email === email);
      if (!a) out.errors.push({ at: Date.now(), problem: `${email} missing` });
      else if (a.type !== "api" && !(a.refresh && a.access)) out.errors.push({ at: Date.now(), problem: `${email} without tokens` });
      else if (a.type !== "api") {
        const tokens = seen.get(email) ?? new Set();
        seen.set(email, tokens);
        if (current.get(email) !== a.refresh && tokens.has(a.refresh)) {
          out.errors.push({ at: Date.now(), problem: `${email}: a refresh token replaced earlier is back (…${a.refresh.slice(-6)})` });
        }
        tokens.add(a.refresh);
        current.set(email, a.refresh);
      }
    }
    if (list.length !== emails.length) out.errors.push({ at: Date.now(), problem: `${list.length} entries` });
  } catch (err) {
    out.errors.push({ at: Date.now(), problem: `${err?.code}: ${String(err?.message ?? err).slice(0, 300)}` });
  }
  if (out.errors.length > 50) out.errors.length = 50;
  await new Promise((r) => setTimeout(r, 20));
}
process.stdout.write(`${JSON.stringify(out)}\n`);
