//! The addon's async runtime: where the binding's promises, reqwest, hyper and the engine's
//! background writes run.
//!
//! People run many OpenCode processes on one machine, each loading the addon, and the machine is
//! rarely idle. napi-rs' built-in runtime starts a multi-threaded tokio runtime as soon as the
//! addon is loaded, with a worker per core, and keeps them until the process exits. Measured
//! (`npm run bench`, `npm run bench -- --busy`), a second worker buys nothing here: the
//! JavaScript thread is the other half of every exchange, and with two workers the runtime's
//! threads woke about twice as often per body batch and per small request (work stealing, and
//! napi's built-in path spawns a second task per call to watch for panics), for more CPU and no
//! more throughput, idle or busy. So this runtime is:
//!
//! - one worker thread ("oauth-pool"), multi-threaded scheduler. (A `current_thread` scheduler
//!   driven by a thread of ours could even stop that thread when idle, and was as fast on bulk
//!   and small requests; but it runs the tasks a task spawns before that task resumes, and a
//!   failover, 429 -> retry on the next account, measured 0.6 ms instead of 0.2: the
//!   bookkeeping write the 429 scheduled went first.)
//! - started by the first task, not when the addon is loaded: a process that loads the plugin
//!   and never sends through the Rust client (Bun's "runtime" transport) starts no thread;
//! - file I/O (`spawn_blocking`) on blocking threads that exit after a few idle seconds.
//!
//! The worker stays once started: tokio stops a worker only by shutting the whole runtime down,
//! which drops every task on it, and tasks outlive the calls that start them (a body's reader
//! between two pulls of a slow stream, pooled connections, a fleet store's connections); a
//! shutdown on idle would have to account for all of them to never cut a stream, for one parked
//! thread. Parked in `epoll_wait` it uses no CPU; it wakes only for work
//! and for timers the pool sets itself, such as the HTTP connection pool's idle sweep (every
//! 90 s while a connection is kept).
//!
//! napi routes every promise of the binding here through its `AsyncRuntime` interface (the
//! `async-runtime` feature; the adapter is `binding::runtime`); the engine's background writes
//! come here too, also when recorded on the JavaScript thread, where no runtime is current.

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};

/// Worker threads. The JavaScript thread is the other consumer of every exchange; a second
/// worker only added wake-ups (see above).
const WORKERS: usize = 1;
/// How long a blocking thread (file I/O) waits for more work before it exits. Bookkeeping
/// writes come at most about once a second under load, so a few seconds keep one thread warm
/// while requests flow, and none lingers once they stop (tokio's default is 10 s).
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for the runtime's threads to exit (napi's figure for its own).
const SHUTDOWN_WAIT: Duration = Duration::from_millis(100);

/// Runs `task` on the current runtime when called from inside one, else on the addon's, started
/// if it was not yet: work spawned from a synchronous call on the JavaScript thread, where no
/// runtime is current and none may have started, still runs. Like every task of ours, it reads
/// the environment as the work that spawned it does (`config::with_caller_env`).
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    // Boxed: tokio's task code is compiled once for every background task, not once per kind
    // (these are bookkeeping writes and the like, never per chunk).
    let task: Pin<Box<dyn Future<Output = ()> + Send>> =
        Box::pin(crate::config::with_caller_env(task));
    if let Ok(handle) = Handle::try_current() {
        handle.spawn(task);
        return Ok(());
    }
    runtime()?.spawn(task);
    Ok(())
}

/// `tokio::spawn` on the current runtime with the future boxed: tokio's task code is compiled
/// once per output type instead of once per future (each kind cost the `.node` 1-3 KB).
pub fn spawn_boxed<T: Send + 'static>(
    task: impl Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let task: Pin<Box<dyn Future<Output = T> + Send>> =
        Box::pin(crate::config::with_caller_env(task));
    tokio::spawn(task)
}

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

/// A panic while the slot was held cannot leave it inconsistent (it is only ever assigned), so
/// a poisoned lock is taken over.
fn slot() -> MutexGuard<'static, Option<Arc<Runtime>>> {
    RUNTIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The runtime, built (and its worker started) on first use.
pub fn runtime() -> Result<Arc<Runtime>, String> {
    let mut slot = slot();
    if let Some(rt) = slot.as_ref() {
        return Ok(rt.clone());
    }
    let mut builder = Builder::new_multi_thread();
    builder
        .worker_threads(WORKERS)
        .thread_name("oauth-pool")
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all();
    let rt = starting_thread(|| builder.build())
        .and_then(|built| built.map_err(|e| e.to_string()))
        .map_err(|e| format!("could not start the async runtime: {e}"))?;
    let rt = Arc::new(rt);
    *slot = Some(rt.clone());
    Ok(rt)
}

thread_local! {
    /// Set while this thread is in `starting_thread`: the panic hook stays quiet for it.
    static STARTING: Cell<bool> = const { Cell::new(false) };
}
static QUIET_HOOK: Once = Once::new();

/// Runs `start`, a tokio call that may need a new thread (building the runtime starts its
/// worker; `spawn_blocking` a blocking thread when none is idle). tokio panics when the OS
/// refuses one (a container at its pids limit, systemd's TasksMax): that panic is returned here
/// as the OS's reason, and not printed into the host's terminal, since the caller reports it
/// with a code. Panics elsewhere, on any thread, still reach the host's hook.
pub fn starting_thread<R>(start: impl FnOnce() -> R) -> Result<R, String> {
    QUIET_HOOK.call_once(|| {
        let host = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !STARTING.with(Cell::get) {
                host(info);
            }
        }));
    });
    STARTING.with(|s| s.set(true));
    let started = std::panic::catch_unwind(AssertUnwindSafe(start));
    STARTING.with(|s| s.set(false));
    started.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "no thread could be started".into())
    })
}

/// Why work given to `blocking` did not run.
#[derive(Debug)]
pub enum NotRun {
    /// No blocking thread was idle and the OS refused a new one (the reason).
    NoThread(String),
    /// It panicked, or the runtime stopped first.
    Lost,
}

/// Runs `work` on tokio's blocking pool (from inside the runtime): its result, or why it did not
/// run. Whoever takes the work runs it: a blocking thread, or nobody once the caller was told no
/// thread could be made. tokio queues the work before it finds that no thread can run it, and
/// the next blocking thread would run it then: a write the caller was told had failed (a
/// `savePool` of an old pool over newer tokens), a lookup nobody waits for.
pub async fn blocking<T: Send + 'static>(work: Box<dyn FnOnce() -> T + Send>) -> Result<T, NotRun> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    start_blocking(Box::new(move || {
        let _ = answer.send(work());
    }))?;
    answered.await.map_err(|_| NotRun::Lost)
}

/// `blocking`'s start, compiled once for every result type (tokio's task code included).
fn start_blocking(job: Box<dyn FnOnce() + Send>) -> Result<(), NotRun> {
    type Slot = Mutex<Option<Box<dyn FnOnce() + Send>>>;
    let take = |slot: &Slot| slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let slot: Arc<Slot> = Arc::new(Mutex::new(Some(job)));
    let queued = {
        let slot = slot.clone();
        move || {
            if let Some(job) = take(&slot) {
                job();
            }
        }
    };
    match starting_thread(|| drop(tokio::task::spawn_blocking(queued))) {
        Err(why) if take(&slot).is_some() => Err(NotRun::NoThread(why)),
        _ => Ok(()),
    }
}

/// Stops the runtime, waiting a bounded time for its threads (none of ours may run once the
/// host unloads the addon). A later task starts a new one.
pub fn shutdown() {
    let runtime = slot().take();
    // Another owner (a `block_on` in progress) shuts it down when it lets go.
    if let Some(runtime) = runtime.and_then(|rt| Arc::try_unwrap(rt).ok()) {
        if Handle::try_current().is_ok() {
            // Waiting is not allowed from inside a runtime (tokio panics).
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(SHUTDOWN_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// One test: the runtime is process-wide.
    #[test]
    fn starts_on_first_use_with_one_named_worker() {
        assert!(slot().is_none(), "nothing is built before the first task");
        let (tx, rx) = mpsc::channel();
        for round in 0..3 {
            let tx = tx.clone();
            spawn(async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let name = std::thread::current().name().map(String::from);
                let _ = tx.send((round, name));
            })
            .unwrap();
            let (got, thread) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(got, round);
            assert_eq!(thread.as_deref(), Some("oauth-pool"));
        }
        let rt = runtime().unwrap();
        assert_eq!(rt.metrics().num_workers(), WORKERS);
        // From inside the runtime, `spawn` stays on it.
        let (tx2, rx2) = mpsc::channel();
        rt.spawn(async move {
            spawn(async move {
                let _ = tx2.send(Handle::current().metrics().num_workers());
            })
            .unwrap();
        });
        assert_eq!(rx2.recv_timeout(Duration::from_secs(5)).unwrap(), WORKERS);
        // Blocking work runs on the runtime's blocking threads.
        let (btx, brx) = mpsc::channel();
        drop(rt.spawn_blocking(move || {
            let _ = btx.send(std::thread::current().name().map(String::from));
        }));
        let name = brx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(name.as_deref(), Some("oauth-pool"));
    }
}
