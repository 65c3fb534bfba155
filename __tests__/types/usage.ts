// Compiled by `tsc --noEmit` in `npm test`: index.d.ts and plugin.d.ts must describe how the
// package is really used (the library, the plugin parts as a host composes them, the plugin
// module). A wrong type here fails the build. Never run.
import type { Hooks, PluginInput } from "@opencode-ai/plugin";
import {
  addApiKey,
  createPoolFetch,
  createPoolTool,
  listAccounts,
  loadPool,
  OAuthPoolPlugin,
  poolAuthHook,
  poolConfigHook,
  poolStatus,
  copyStore,
  gatewayKey,
  refreshAccount,
  savePool,
  serve,
  setPriority,
  setReserve,
  storeInit,
  type PoolError,
  type PoolEvent,
  type PoolStatus,
} from "opencode-oauth-pool";
import plugin from "opencode-oauth-pool/plugin";

declare const input: PluginInput;

async function library(): Promise<void> {
  const pool = await loadPool("/tmp/pool.json");
  pool.anthropic[0]?.email.toLowerCase();
  await savePool(pool);
  const status: PoolStatus = await poolStatus();
  status.caseClashes.flat().join(",");
  status.unsavedTokens.map((u) => u.since + 1);
  const accounts = await listAccounts();
  accounts.filter((a) => a.status === "invalid").map((a) => a.index);
  (await setPriority("a@example.com", 3)).map((email) => email.toLowerCase());
  await addApiKey("fake-key", { email: "k@example.com" });
  const refreshed = await refreshAccount("a@example.com");
  if (refreshed.outcome === "adopted") refreshed.expires?.toFixed();
  refreshed.events.filter((e) => e.kind === "tokens-unsaved");
  // An API key's entry has no expiry: null, not a number.
  const expiry: number | null | undefined = pool.anthropic[0]?.expires;
  void expiry;
  // Either window may be missing (null) when the other was seen.
  const quota = accounts[0]?.quota;
  if (quota) void [quota.fiveHour?.status ?? "unknown", quota.sevenDay === null, quota.updatedAt ?? 0];
  const events: PoolEvent[] = [];
  const fetch = createPoolFetch({ onEvent: (e) => events.push(e), transport: "runtime" });
  const res = await fetch("https://api.anthropic.com/v1/messages", { method: "POST", body: "{}" });
  void (res.status + 1);
  // The README's example reads which account served it, on the answer and on its clone.
  const served: string | null = res.poolAccount ?? res.clone().poolAccount;
  served?.toLowerCase();
  await setReserve("a@example.com", 0.2);
  accounts[0]?.windows?.filter((w) => w.scope === "opus").map((w) => w.utilization ?? 0);
  accounts[0]?.usage?.today.byModel["claude-opus-4-1"]?.cacheRead.toFixed();
  const gateway = await serve({ port: 0 });
  await fetch(`${gateway.url}/v1/messages`, { headers: { "x-api-key": gatewayKey() } });
  await gateway.unref().close(1000);
  const init = await storeInit("postgres://db.example/pool");
  init.keyCreated?.length;
  const copied = await copyStore("/tmp/pool.json", init.location);
  void (copied.entries + 1);
  try {
    await loadPool();
  } catch (e) {
    const err = e as PoolError;
    if (err.code === "POOL_CORRUPT" || err.code === "NATIVE_MISSING") throw err;
  }
}

// A host plugin (aidevops-shaped) composing the parts.
async function host(): Promise<Hooks> {
  const options = { path: "/tmp/pool.json", toolName: "model-accounts-pool" };
  return {
    auth: poolAuthHook(input, options),
    tool: { [options.toolName]: createPoolTool(input, options) },
    config: async (config) => {
      await poolConfigHook(config, { input, ...options });
    },
  };
}

async function whole(): Promise<Hooks> {
  const hooks = await OAuthPoolPlugin(input, { provider: "anthropic" });
  hooks.auth.provider.toUpperCase();
  return hooks;
}

async function module(): Promise<void> {
  const id: "oauth-pool" = plugin.id;
  await plugin.server(input, { path: "/tmp/pool.json" });
  const cleanup = await plugin.setup({ options: { path: "/tmp/pool.json" } });
  if (cleanup) await cleanup();
  void id;
}

void [library, host, whole, module];
