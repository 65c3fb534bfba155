// What the children that starve the pool of a resource (fd-starved.mjs, thread-starved.mjs)
// ask of it, and how they report each answer.

/** A message request through the pool's fetch `f` to `apiUrl`: its status, the body read. */
export const asker = (f, apiUrl) => async () => {
  const r = await f(`${apiUrl}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
  });
  await r.text();
  return r.status;
};

/** `{ ok }` with what `fn` resolved to, or `{ code, message }` with what it threw. */
export async function outcome(fn) {
  try {
    return { ok: (await fn()) ?? null };
  } catch (e) {
    return { code: e?.code ?? null, message: String(e?.message ?? e).slice(0, 600) };
  }
}
