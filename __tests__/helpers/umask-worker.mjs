// Uses the pool the way a user does, in a process whose umask the test set (ownership.test.mjs):
// the first write (which makes ~/.aidevops), an add, a request through createPoolFetch (an
// expired token, so a refresh and the refresh journal), a refresh on demand, and the gateway
// (its key file). Prints what each step gave as one JSON line.
import { addApiKey, createPoolFetch, refreshAccount, savePool, serve } from "../../index.mjs";

const { entries, messagesUrl, email } = JSON.parse(process.argv[2]);
const steps = {};
async function step(name, run) {
  try {
    steps[name] = await run();
  } catch (e) {
    steps[name] = `failed: ${e.code ?? ""} ${e.message}`;
  }
}

await step("save", async () => {
  await savePool({ version: 1, anthropic: entries });
  return "ok";
});
await step("add", async () => (await addApiKey(`fake-key-umask-${"x".repeat(12)}`, { email: "key@x.test" })).added);
await step("fetch", async () => {
  const res = await createPoolFetch()(messagesUrl, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "" },
    body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 64, messages: [{ role: "user", content: "hi" }] }),
  });
  await res.text();
  return res.status;
});
await step("refresh", async () => (await refreshAccount(email)).outcome);
await step("gateway", async () => {
  const gateway = await serve({ port: 0 });
  await gateway.close(0);
  return gateway.keyCreated ? "key made" : "no key made";
});
console.log(JSON.stringify(steps));
