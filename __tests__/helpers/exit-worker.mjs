// A host that quits while its refresh of an account's token is at the token endpoint: sends one
// request, aborts it on a line from stdin (the test sends one once the refresh has arrived), says
// "exiting" and ends the way hosts do: `exit` calls process.exit (OpenCode on quit), `end` lets
// the event loop run dry (a script). `signal`: never aborts nor ends, the test signals it, and
// there is no listener of the host's; `handled`: the same, with a host listener for SIGTERM that
// says so and calls process.exit(7).
//   node exit-worker.mjs <poolPath> <apiUrl> exit|end|signal|handled
import { createPoolFetch } from "../../index.mjs";

const [path, apiUrl, how] = process.argv.slice(2);
const signalled = how === "signal" || how === "handled";
if (how === "handled") {
  process.on("SIGTERM", () => {
    process.stdout.write("host quits\n");
    process.exit(7);
  });
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
  if (how === "exit") process.exit(0);
}
