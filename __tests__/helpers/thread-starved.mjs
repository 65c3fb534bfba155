// Runs with a pthread_create shim preloaded (os-hostility.test.mjs): while the file named by
// THREADS_REFUSED_WHILE exists, every new thread fails with EAGAIN, as in a container at its
// pids limit. Calls each entry point of the pool with no thread to be had, then again once
// threads can be made. Prints one JSON line: what each call gave ({ ok } or { code, message }).
//   node thread-starved.mjs <phase> <poolPath> <apiUrl> <email>
// (<poolPath> may be a fleet store's postgres:// URL.)
// phase "cold": nothing of the addon has started yet; "warm": the runtime runs, and the
// starvation begins once its blocking threads have gone idle and exited; "mid-refresh": one
// request whose refresh the test starves (it creates the file when the refresh call arrives);
// "lookup": a request to an API named by a host name (`apiUrl`), starved then not;
// "serve-by-name": serve() on the host name given as `apiUrl`, starved then not; "login": one
// addAccount of the paste in LOGIN_PASTE (pkce in LOGIN_VERIFIER, LOGIN_STATE), starved by the
// test when its token call arrives, then up to 30 s for the login to reach the pool file.
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { addAccount, createPoolFetch, flushPool, listAccounts, loadPool, refreshAccount, serve } from "../../index.mjs";
import { asker, outcome } from "./starved-calls.mjs";

const [phase, path, apiUrl, email] = process.argv.slice(2);
const flag = process.env.THREADS_REFUSED_WHILE;
// Node's own thread pool starts with its first asynchronous file call, and Bun's HTTP client
// thread with its first fetch: started now, before the shortage, so that what is starved is the
// addon, not the JavaScript runtime (which aborts without them).
await readFile(new URL(import.meta.url));
await (await fetch(`${apiUrl}/__mock/none`).catch(() => null))?.text();

const addonThreads = () =>
  readdirSync("/proc/self/task").filter((tid) => {
    try {
      return readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim() === "oauth-pool";
    } catch {
      return false;
    }
  }).length;

const f = createPoolFetch({ path, transport: "native" });
const ask = asker(f, apiUrl);
const throughGateway = async () => {
  const gw = await serve({ port: 0, path });
  try {
    const r = await fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    await r.text();
    return r.status;
  } finally {
    await gw.close(0);
  }
};
const entries = {
  request: () => ask(),
  load: async () => (await loadPool(path)).anthropic.length,
  list: async () => (await listAccounts(path)).length,
  refresh: async () => (await refreshAccount(email, path)).outcome,
  gateway: throughGateway,
};

if (phase === "mid-refresh") {
  const starved = { request: await outcome(() => ask()) };
  rmSync(flag, { force: true });
  const after = { request: await outcome(() => ask()), flush: await outcome(() => flushPool(path)) };
  process.stdout.write(`${JSON.stringify({ starved, after })}\n`);
  process.exit(0);
}
if (phase === "login") {
  const { LOGIN_PASTE, LOGIN_VERIFIER, LOGIN_STATE } = process.env;
  const starved = { login: await outcome(() => addAccount(LOGIN_PASTE, { verifier: LOGIN_VERIFIER, state: LOGIN_STATE }, path)) };
  rmSync(flag, { force: true });
  const landed = async () => (await loadPool(path)).anthropic.some((a) => a.email === email);
  const deadline = Date.now() + 30_000;
  while (!(await landed()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  process.stdout.write(`${JSON.stringify({ starved, after: { landed: await landed() } })}\n`);
  process.exit(0);
}
if (phase === "lookup") {
  // One request (the pool read, the host looked up), then the blocking threads go idle and the
  // mock closes the idle connection (its keep-alive is 5 s): the next request has no
  // connection to reuse and must look the host up again.
  const warm = await outcome(() => ask());
  const closed = Date.now() + 6_000;
  const deadline = Date.now() + 30_000;
  while ((addonThreads() > 1 || Date.now() < closed) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  if (warm.ok !== 200) throw new Error(`the first request failed: ${JSON.stringify(warm)}`);
  writeFileSync(flag, "");
  const starved = { request: await outcome(() => ask()) };
  rmSync(flag);
  const after = { request: await outcome(() => ask()) };
  process.stdout.write(`${JSON.stringify({ starved, after })}\n`);
  process.exit(0);
}
if (phase === "serve-by-name") {
  // serve() on a host name (TLS_CERT, TLS_KEY its certificate), starved once the runtime runs
  // and its blocking threads went idle: the name's lookup needs one.
  const options = { host: apiUrl, port: 0, path, allowRemote: true, tlsCert: process.env.TLS_CERT, tlsKey: process.env.TLS_KEY };
  const started = async () => {
    const gw = await serve(options);
    await gw.close(0);
    return new URL(gw.url).protocol;
  };
  await listAccounts(path);
  const deadline = Date.now() + 30_000;
  while (addonThreads() > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  writeFileSync(flag, "");
  const starved = { serve: await outcome(started) };
  rmSync(flag);
  const after = { serve: await outcome(started) };
  process.stdout.write(`${JSON.stringify({ starved, after })}\n`);
  process.exit(0);
}
if (phase === "warm") {
  await outcome(() => ask());
  await flushPool(path);
  // Blocking threads exit after 5 s without work.
  const deadline = Date.now() + 30_000;
  while (addonThreads() > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
}
const starved = {};
writeFileSync(flag, "");
for (const [what, fn] of Object.entries(entries)) starved[what] = await outcome(fn);
rmSync(flag);
const after = {};
for (const [what, fn] of Object.entries(entries)) after[what] = await outcome(fn);
after.flush = await outcome(() => flushPool(path));
process.stdout.write(`${JSON.stringify({ starved, after })}\n`);
process.exit(0);
