// `oauth-pool serve`: the pool gateway, an Anthropic-compatible endpoint any client can point at
// (the Anthropic SDKs, the AI SDK, Claude Code's ANTHROPIC_BASE_URL, OpenCode 2). It prints the
// URL it listens on, runs until SIGINT or SIGTERM, then lets streams in flight finish (bounded)
// and exits 0.
import { millisOption } from "./args.mjs";
import { UsageError } from "./errors.mjs";
import { text } from "./output.mjs";

function port(value) {
  if (value === undefined) return 8787;
  if (!/^\d+$/.test(value) || Number(value) > 65535) throw new UsageError(text`--port must be a port number (0 picks a free one), not ${value}`);
  return Number(value);
}

async function serve({ lib, options, path, out }) {
  if (options["show-key"]) {
    const key = lib.gatewayKey(path);
    out.result({ key }, key);
    return;
  }
  if (Boolean(options["tls-cert"]) !== Boolean(options["tls-key"])) throw new UsageError("TLS needs both --tls-cert and --tls-key");
  const drainMs = millisOption(options["drain-ms"], "drain-ms", 10_000);
  const gateway = await lib.serve({
    host: options.host ?? "127.0.0.1",
    port: port(options.port),
    path,
    allowRemote: Boolean(options["allow-remote"]),
    tlsCert: options["tls-cert"],
    tlsKey: options["tls-key"],
    headerTimeoutMs: millisOption(options["header-timeout-ms"], "header-timeout-ms", undefined),
  });
  out.result({ url: gateway.url }, `listening on ${gateway.url} (clients send the key from: oauth-pool serve --show-key)`);
  const signal = await new Promise((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"));
    process.once("SIGTERM", () => resolve("SIGTERM"));
  });
  out.note(`${signal}: finishing the streams in flight (at most ${drainMs} ms), then stopping`);
  await gateway.close(drainMs);
  out.note("stopped");
}

export const commands = [
  {
    name: "serve",
    options: {
      host: { type: "string", placeholder: "<addr>" },
      port: { type: "string", placeholder: "<n>" },
      "show-key": { type: "boolean" },
      "allow-remote": { type: "boolean" },
      "tls-cert": { type: "string", placeholder: "<file>" },
      "tls-key": { type: "string", placeholder: "<file>" },
      "drain-ms": { type: "string", placeholder: "<ms>" },
      "header-timeout-ms": { type: "string", placeholder: "<ms>" },
    },
    summary:
      "run the pool gateway: an Anthropic-compatible endpoint (default 127.0.0.1:8787,\n--port 0 picks one) for any client; --show-key prints the key clients send",
    run: serve,
  },
];
