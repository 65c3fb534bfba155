// The API origin played at the socket level, for answers no HTTP server library would write
// (cut, lying, folded, stalled), and the three ways a caller reaches it through the pool: the
// library's fetch on each transport and the gateway.
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { createPoolFetch, serve } from "../../index.mjs";

/**
 * Runs `fn(api)` with the API origin played by a raw socket server on loopback
 * (OAUTH_POOL_API_URL points at it meanwhile). By default `reply(socket, first)` is called on
 * the first bytes of each connection. With `perRequest`, each request is read whole (its head
 * and a `content-length` body) and `reply(socket, index, head)` is called for it, `index`
 * counting the requests the server got, over all connections.
 */
export async function withRawApi(reply, fn, { perRequest = false } = {}) {
  let index = 0;
  const sockets = new Set();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    if (!perRequest) {
      socket.once("data", (first) => reply(socket, first));
      return;
    }
    let pending = Buffer.alloc(0);
    socket.on("data", (data) => {
      pending = Buffer.concat([pending, data]);
      for (;;) {
        const end = pending.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = pending.subarray(0, end).toString("latin1");
        const length = Number(/^content-length:\s*(\d+)\s*$/im.exec(head)?.[1] ?? 0);
        if (pending.length < end + 4 + length) return;
        pending = pending.subarray(end + 4 + length);
        reply(socket, index++, head);
      }
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const saved = process.env.OAUTH_POOL_API_URL;
  process.env.OAUTH_POOL_API_URL = `http://127.0.0.1:${server.address().port}`;
  try {
    return await fn(process.env.OAUTH_POOL_API_URL);
  } finally {
    process.env.OAUTH_POOL_API_URL = saved;
    server.close();
    // Answers left stalled hold their connections open (and the process alive).
    for (const socket of sockets) socket.destroy();
  }
}

/**
 * A way to reach the API through the pool of `path`: `kind` is a transport of the library's
 * fetch ("native", "runtime") or "gateway" (started here, with `key` as its key).
 * `send(init, route)` resolves the Response of `route` (default /v1/messages) on the API
 * origin as the environment names it at the call; `close()` stops a gateway.
 * `clientConnections()` names a gateway's connections from clients now, and `dropped(those)`
 * resolves once the gateway holds none of them: a gateway learns that a client left from its
 * socket, after the client's fetch has already rejected, and drops the request with the
 * connection. For the library's fetch, whose abort settles only once the pool gave the request
 * up, both are at once.
 */
export async function throughPool(kind, path, { key } = {}) {
  if (kind !== "gateway") {
    const f = createPoolFetch({ path, transport: kind });
    return {
      send: (init, route = "/v1/messages") => f(`${process.env.OAUTH_POOL_API_URL}${route}`, init),
      close: async () => {},
      clientConnections: async () => [],
      dropped: async () => {},
    };
  }
  const gw = await serve({ port: 0, path });
  return {
    send: (init, route = "/v1/messages") => fetch(`${gw.url}${route}`, { ...init, headers: { ...init.headers, "x-api-key": key } }),
    close: () => gw.close(1000),
    clientConnections: () => connectionsOn(Number(new URL(gw.url).port)),
    dropped: async (those) => {
      // Where there is no table (not Linux) a second is given instead.
      if (those === null) return sleep(1000);
      while ((await connectionsOn(Number(new URL(gw.url).port)))?.some((c) => those.includes(c))) await sleep(5);
    },
  };
}

/**
 * The remote ends of the connections the system's TCP table shows on local `port`, but its
 * listener and those in TIME_WAIT (let go already); `null` where there is no table.
 */
async function connectionsOn(port) {
  const local = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  const tables = await Promise.all(["/proc/net/tcp", "/proc/net/tcp6"].map((f) => readFile(f, "latin1").catch(() => "")));
  if (!tables.some(Boolean)) return null;
  // Columns: sl, local address, remote address, state (0A listening, 06 TIME_WAIT).
  return tables
    .flatMap((t) => t.split("\n").slice(1))
    .map((line) => line.trim().split(/\s+/))
    .filter((cols) => cols[1]?.endsWith(local) && cols[3] !== "0A" && cols[3] !== "06")
    .map((cols) => cols[2]);
}
