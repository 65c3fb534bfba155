// The OpenCode plugin entry (`opencode-oauth-pool/plugin`, and `./server`, which both OpenCode
// generations resolve). One default export that both load:
// - OpenCode 1.18 calls `server(input, options)` (its loader ignores the other keys);
// - OpenCode 2 calls `setup(ctx)`. 1.18's embedded V2 core calls it too, with a registration-only
//   context (no `session` hooks): there `server()` already does the job, so setup stands aside.
// No named exports: 1.18 calls every export of a plugin module as a plugin.
import { writeSync } from "node:fs";
import { OAuthPoolPlugin } from "./lib/plugin.mjs";

async function setup(ctx) {
  if (typeof ctx?.session?.hook !== "function") {
    if (process.env.OAUTH_POOL_LOG) {
      // Written at once: a host that exits right after its run must not lose the line (a
      // buffered console write to a pipe can be).
      try {
        writeSync(2, "[oauth-pool] setup: registration-only context (OpenCode 1.18): server() serves this host; nothing registered\n");
      } catch {}
    }
    return undefined;
  }
  const { setupV2 } = await import("./lib/opencode2/setup.mjs");
  return setupV2(ctx);
}

export default { id: "oauth-pool", server: OAuthPoolPlugin, setup };
