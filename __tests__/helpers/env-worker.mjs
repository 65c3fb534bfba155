// A worker thread (Node's worker_threads or Bun's) that uses the pool, for
// __tests__/environments.test.mjs: each worker is a JavaScript environment of its own in the
// process. `workerData.job` says what it does; it reports each step with postMessage.
import { parentPort, workerData } from "node:worker_threads";

const { index, job, url, body, path, count = 1 } = workerData;
const api = await import(index);
const post = (m) => parentPort.postMessage(m);
const init = () => ({ method: "POST", headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" }, body });

try {
  if (job === "ask") {
    // `count` requests one after another; each reports the account that served it.
    for (let i = 0; i < count; i++) {
      const res = await api.createPoolFetch(path ? { path } : undefined)(url, init());
      await res.text();
      post({ status: res.status, account: res.poolAccount });
    }
    post("done");
  } else if (job === "stream") {
    // Reads a slow stream; the test ends the worker in the middle of it.
    const res = await api.createPoolFetch(path ? { path } : undefined)(url, init());
    const reader = res.body.getReader();
    for (;;) {
      const { done } = await reader.read();
      if (done) break;
      post("chunk");
    }
    post("done");
  } else if (job === "exit-mid-stream") {
    const res = await api.createPoolFetch(path ? { path } : undefined)(url, init());
    await res.body.getReader().read();
    process.exit(7);
  } else if (job === "serve") {
    const gateway = await api.serve({ port: 0, path });
    post({ url: gateway.url });
  }
} catch (err) {
  post({ error: err?.code ?? "ERROR", message: String(err?.message ?? err) });
}
