//! napi's door to the addon's runtime (`crate::runtime`): every promise the binding returns (an
//! `async fn`, or `binding::promise`) is one task there (napi's `async-runtime` feature), so no
//! second runtime starts with the addon.

use std::future::Future;
use std::pin::Pin;

use napi::bindgen_prelude::{AsyncRuntime, AsyncRuntimeRejection, AsyncRuntimeTask};

use crate::runtime;

/// Registers the runtime with napi. Called once, when the addon is loaded (`module_init`);
/// builds nothing and starts no thread.
pub fn install() {
    napi::bindgen_prelude::register_async_runtime(PoolRuntime);
}

fn rejection<T>(work: T, why: String) -> AsyncRuntimeRejection<T> {
    AsyncRuntimeRejection::new(work, coded(why))
}

/// The runtime could not be started (no descriptor left for its poller, no thread): the
/// process's I/O resources, said with the code callers already handle for local I/O, as
/// lib/errors.mjs reads it (napi's bare reason has none). A later call tries again.
fn coded(why: String) -> napi::Error {
    napi::Error::from_reason(format!("[POOL_IO] {why}; the next call tries again"))
}

/// How long the last environment's teardown waits for a refresh whose new tokens are not
/// written yet (the exit hook's figure, lib/native.mjs).
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// napi's handle on the runtime, which lives in `crate::runtime`.
struct PoolRuntime;

// SAFETY: napi requires that nothing of ours runs after `shutdown` returns, since Node may then
// unload the addon. `shutdown` shuts the runtime down, waiting a bounded time for its threads
// as napi's built-in runtime does; and the image is never unloaded anyway (napi-build links it
// with `-z nodelete`, and `start` pins it).
unsafe impl AsyncRuntime for PoolRuntime {
    fn spawn(
        &self,
        task: AsyncRuntimeTask,
    ) -> std::result::Result<(), AsyncRuntimeRejection<AsyncRuntimeTask>> {
        match runtime::runtime() {
            Ok(rt) => {
                // Called on the JavaScript thread that made the call: the promise's work reads
                // that environment's variables, whichever environment hands over next.
                rt.spawn(crate::config::with_caller_env(task));
                Ok(())
            }
            Err(why) => Err(rejection(task, why)),
        }
    }

    fn block_on(&self, future: Pin<&mut dyn Future<Output = ()>>) -> napi::Result<()> {
        runtime::runtime().map_err(coded)?.block_on(future);
        Ok(())
    }

    fn start(&self) -> napi::Result<()> {
        // Nothing to start: the runtime is built by the first task. Keep the image loaded
        // while threads of ours may exist (napi does the same for its own runtime).
        napi::bindgen_prelude::retain_current_module_for_unload_safety();
        Ok(())
    }

    fn shutdown(&self) -> napi::Result<()> {
        // napi shuts the runtime down when the last environment that loaded the addon goes,
        // which is not always the process's end: a worker thread that alone used the pool,
        // terminated, took the tasks with it, a refresh in flight too (its refresh token spent,
        // its successor never written: the login lost). What the exit hook settles is settled
        // here first (at once when nothing is unwritten), unless this is a runtime's own thread.
        if tokio::runtime::Handle::try_current().is_err() {
            crate::engine::credentials::settle_unwritten(SETTLE_LIMIT);
            crate::engine::flush_before_exit(crate::engine::EXIT_FLUSH_LIMIT);
        }
        runtime::shutdown();
        Ok(())
    }

    fn spawn_blocking(
        &self,
        work: Box<dyn FnOnce() + Send + 'static>,
    ) -> std::result::Result<(), AsyncRuntimeRejection<Box<dyn FnOnce() + Send + 'static>>> {
        match runtime::runtime() {
            Ok(rt) => {
                // Detached: napi settles its promise from inside `work`.
                drop(rt.spawn_blocking(crate::config::in_caller_env(work)));
                Ok(())
            }
            Err(why) => Err(rejection(work, why)),
        }
    }
}
