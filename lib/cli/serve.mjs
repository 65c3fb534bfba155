// `oauth-pool serve`: the pool gateway, an Anthropic-compatible endpoint any client can point at
// (the Anthropic SDKs, the AI SDK, Claude Code's ANTHROPIC_BASE_URL, OpenCode 2). It prints the
// URL it listens on, runs until SIGINT, SIGTERM or SIGHUP, then lets streams in flight finish (bounded)
// and exits 0.
import { millisOption } from "./args.mjs";
import { EXIT, UsageError } from "./errors.mjs";
import { echo, text } from "./output.mjs";
import { endingSignals } from "./signals.mjs";

const OUTPUT_WAIT_MS = 2000;

function port(value) {
  if (value === undefined) return 8787;
  if (!/^\d+$/.test(value) || Number(value) > 65535) throw new UsageError(echo`--port must be a port number (0 picks a free one), not ${value}`);
  return Number(value);
}

async function serve({ lib, options, path, out }) {
  if (options["show-key"]) {
    const key = lib.gatewayKey(path);
    out.result({ key }, key);
    return;
  }
  if (Boolean(options["tls-cert"]) !== Boolean(options["tls-key"])) throw new UsageError("TLS needs both --tls-cert and --tls-key");
  // 0: streams in flight are cut at once (the library's close(0)).
  const drainMs = millisOption(options["drain-ms"], "drain-ms", 10_000, 0);
  const gateway = await lib.serve({
    host: options.host ?? "127.0.0.1",
    port: port(options.port),
    path,
    allowRemote: Boolean(options["allow-remote"]),
    tlsCert: options["tls-cert"],
    tlsKey: options["tls-key"],
    headerTimeoutMs: millisOption(options["header-timeout-ms"], "header-timeout-ms", undefined),
  });
  out.result({ url: gateway.url, keyCreated: gateway.keyCreated }, `listening on ${gateway.url} (clients send the key from: oauth-pool serve --show-key)`);
  // A key no client holds yet (the first start, or a pool file moved without its key file):
  // clients with an older key are refused, and would be told nothing else.
  if (gateway.keyCreated)
    out.note(text`made a new gateway key in ${gateway.keyCreated}: clients need it (oauth-pool serve --show-key); one holding an older key is refused`);
  // SIGHUP too (the terminal or ssh session it ran in closed): by Node's default it died on the
  // spot, streams in flight cut and the last bookkeeping lost.
  // Not one the process ignores: `nohup oauth-pool serve &` (under Bun, which keeps the ignore)
  // stopped when the ssh session it was started from closed.
  const signal = await new Promise((resolve) => {
    for (const name of endingSignals()) process.once(name, () => resolve(name));
  });
  out.note(`${signal}: finishing the streams in flight (at most ${drainMs} ms), then stopping`);
  await gateway.close(drainMs);
  out.note("stopped");
  // A reader that no longer takes our output (a supervisor's full pipe) cannot hold the stop:
  // the exit waits for it that long, then what it did not take is dropped. It waited for good.
  setTimeout(() => process.exit(EXIT.OK), OUTPUT_WAIT_MS).unref();
}

export const commands = [
  {
    name: "serve",
    options: {
      host: { type: "string", placeholder: "<addr>", help: "the address to listen on (default 127.0.0.1; another needs\n--allow-remote and TLS)" },
      port: { type: "string", placeholder: "<n>", help: "the port (default 8787; 0 picks a free one)" },
      "show-key": { type: "boolean", help: "print the key clients send, and exit" },
      "allow-remote": { type: "boolean", help: "listen on an address other hosts reach (needs --tls-cert and --tls-key)" },
      "tls-cert": { type: "string", placeholder: "<file>", help: "PEM certificate (chain): serve https" },
      "tls-key": { type: "string", placeholder: "<file>", help: "PEM private key of --tls-cert" },
      "drain-ms": {
        type: "string",
        placeholder: "<ms>",
        help: "on SIGINT, SIGTERM or SIGHUP, how long streams in flight may finish\n(default 10000; 0 cuts them at once)",
      },
      "header-timeout-ms": { type: "string", placeholder: "<ms>", help: "how long a client may take to send its request's headers\n(default 10000)" },
    },
    summary:
      "run the pool gateway: an Anthropic-compatible endpoint (default 127.0.0.1:8787,\n--port 0 picks one) for any client; --show-key prints the key clients send",
    run: serve,
  },
];
