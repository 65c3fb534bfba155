// A host that quits while its refresh of an account's token is at the token endpoint: sends one
// request, aborts it on a line from stdin (the test sends one once the refresh has arrived), says
// "exiting" and ends the way hosts do: `exit` calls process.exit (OpenCode on quit), `end` lets
// the event loop run dry (a script). `signal`: never aborts nor ends, the test signals it, and
// there is no listener of the host's; `handled`: the same, with a host listener for SIGTERM that
// says so and calls process.exit(7); `again`: a host listener for one SIGTERM that goes on (a
// server's drain), sent before the request, so that the test's SIGTERM is the second one;
// `throwing`: as `exit`, with an `exit` listener of the host's, added before the pool loads, that
// throws (a clean-up that fails).
//   node exit-worker.mjs <poolPath> <apiUrl> exit|end|signal|handled|again|throwing
import { createPoolFetch, loadPool } from "../../index.mjs";

const [path, apiUrl, how] = process.argv.slice(2);
const signalled = how === "signal" || how === "handled" || how === "again";
if (how === "throwing") {
  process.on("exit", () => {
    throw new Error("the host's clean-up failed");
  });
}
if (how === "handled") {
  process.on("SIGTERM", () => {
    process.stdout.write("host quits\n");
    process.exit(7);
  });
}
if (how === "again") {
  // The addon loaded first: the pool listens before the host does, as once a request was made.
  await loadPool(path);
  const heard = new Promise((resolve) =>
    process.once("SIGTERM", () => {
      process.stdout.write("host goes on\n");
      resolve();
    }),
  );
  // A signal's watcher does not keep the event loop alive: a timer does, until it is heard.
  const alive = setInterval(() => {}, 60_000);
  process.kill(process.pid, "SIGTERM");
  await heard;
  clearInterval(alive);
}
const f = createPoolFetch({ path });
const abort = new AbortController();
if (signalled) setInterval(() => {}, 60_000);
else {
  process.stdin.once("data", () => abort.abort());
  process.stdin.resume();
}
try {
  const res = await f(`${apiUrl}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    signal: abort.signal,
  });
  process.stdout.write(`answered ${res.status}\n`);
} catch (err) {
  process.stdout.write(`aborted ${err?.name ?? err}\n`);
}
if (!signalled) {
  process.stdin.pause();
  process.stdout.write("exiting\n");
  if (how === "exit" || how === "throwing") process.exit(0);
}
