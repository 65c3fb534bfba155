//! The pool store across real processes: the crate's test binary runs itself again as workers
//! (`POOL_WORKER=...`), so every writer is a separate process with its own file descriptors.
//! (A unit-test module, not a `tests/` integration test: that would need an rlib beside the
//! cdylib, and cargo then builds the `.node` without LTO.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{FileLock, FileStore as Store};
use crate::pool::Pool;
use serde_json::json;

fn counter(pool: &Pool) -> i64 {
    pool.extra.get("n").and_then(|v| v.as_i64()).unwrap_or(0)
}

/// Holder entry: takes the store's write lock, starts a child that outlives it (as a host's
/// shell command would), says so on stdout with the child's pid, and keeps the lock until killed.
#[test]
// The child is never waited for: it outlives this process, which is killed.
#[allow(clippy::zombie_processes)]
fn lock_holder_entry() {
    let Ok(path) = std::env::var("POOL_HOLD_LOCK") else {
        return;
    };
    let _held = FileLock::acquire(Path::new(&path), Duration::from_secs(5)).unwrap();
    let child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    println!("held {}", child.id());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Worker entry: does `POOL_ITERATIONS` locked increments (or loops forever when 0).
#[test]
fn worker_entry() {
    let Ok(path) = std::env::var("POOL_WORKER") else {
        return;
    };
    let store = Store::new(PathBuf::from(path));
    let iterations: u64 = std::env::var("POOL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut i = 0;
    while iterations == 0 || i < iterations {
        store
            .update(|p| {
                let n = counter(p);
                p.extra.insert("n".into(), json!(n + 1));
                // Some bulk, so a torn write would be visible.
                p.extra
                    .insert("pad".into(), json!("x".repeat(4096 + (n as usize % 97))));
                Ok(())
            })
            .unwrap();
        i += 1;
    }
}

fn spawn_worker(path: &Path, iterations: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::processes::worker_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("POOL_WORKER", path)
        .env("POOL_ITERATIONS", iterations.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn eight_processes_fifty_increments_no_lost_update_and_always_parses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oauth-pool.json");
    let store = Store::new(&path);
    store.save(&Pool::default()).unwrap();
    let mut workers: Vec<Child> = (0..8).map(|_| spawn_worker(&path, 50)).collect();
    // A reader polls without the lock the whole time: every snapshot must parse.
    let mut reads = 0;
    let mut last = 0;
    while workers.iter_mut().any(|w| w.try_wait().unwrap().is_none()) {
        let pool = store.load().expect("a reader saw a torn or corrupt file");
        let n = counter(&pool);
        assert!(n >= last, "counter went backwards: {n} < {last}");
        last = n;
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        reads += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    assert_eq!(counter(&store.load().unwrap()), 400, "no lost update");
    assert!(reads > 0);
}

#[cfg(unix)]
#[test]
fn sigkill_of_a_writer_never_tears_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oauth-pool.json");
    let store = Store::new(&path);
    store.save(&Pool::default()).unwrap();
    let mut last = 0;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let rounds = std::env::var("POOL_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // On a loaded machine a worker may not reach its first write before the kill: the rounds go
    // on (up to five times as many) until some writer's work has landed, or the test shows nothing.
    let mut round = 0;
    while round < rounds || (last == 0 && round < rounds * 5) {
        round += 1;
        let mut child = spawn_worker(&path, 0);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(2_000 + seed % 20_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let pool = store.load().expect("torn file after SIGKILL");
        let n = counter(&pool);
        assert!(n >= last, "a committed generation was lost: {n} < {last}");
        last = n;
        assert_eq!(mode(&path), 0o600);
    }
    // The next writer cleans the temp files the killed ones left behind.
    store
        .update(|p| {
            p.extra.insert("done".into(), json!(true));
            Ok(())
        })
        .unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "orphaned temps: {leftovers:?}");
    assert!(last > 0, "the writers made progress");
}

#[cfg(unix)]
#[test]
fn a_killed_lock_holder_frees_the_lock_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oauth-pool.json");
    let store = Store::new(&path);
    store.save(&Pool::default()).unwrap();
    // A child of ours takes the lock and tells us when it holds it: no sleep guesses how long
    // that takes, and no flock(1), which macOS lacks.
    let lock = store.lock_path();
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::processes::lock_holder_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("POOL_HOLD_LOCK", &lock)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        use std::io::BufRead;
        assert!(out.read_line(&mut line).unwrap() > 0, "holder ended early");
        // libtest prints the test's name on the same line before the test's own output.
        if line.contains("held ") {
            break;
        }
    }
    // The holder's child lives on after the holder is killed: had it inherited the lock's
    // descriptor (no close-on-exec), the lock stayed held until the child ended.
    let inheritor: libc::pid_t = line
        .trim_end()
        .rsplit("held ")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let busy = FileLock::acquire(&lock, Duration::from_millis(50)).unwrap_err();
    assert_eq!(busy.code(), "POOL_BUSY", "the lock is really held");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let start = Instant::now();
    store
        .update(|p| {
            p.extra.insert("after".into(), json!(1));
            Ok(())
        })
        .unwrap();
    let waited = start.elapsed();
    // SAFETY: a plain kill(2) of the child the holder started, which is still running.
    unsafe { libc::kill(inheritor, libc::SIGKILL) };
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");
}

/// Starts a process of ours that takes the lock at `path` (`lock_holder_entry`); it prints
/// `held <pid>` once it holds it, or ends failing after 5 s without it.
#[cfg(unix)]
fn spawn_holder(path: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::processes::lock_holder_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("POOL_HOLD_LOCK", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The holder's own line once it holds the lock; `None` when it ended without it.
#[cfg(unix)]
fn held_line(holder: &mut Child) -> Option<String> {
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        if line.contains("held ") {
            return Some(line);
        }
    }
}

/// Kills a holder and the child it started (its `held <pid>` line).
#[cfg(unix)]
fn end_holder(mut holder: Child, line: &str) {
    holder.kill().unwrap();
    holder.wait().unwrap();
    if let Some(pid) = line
        .trim_end()
        .rsplit("held ")
        .next()
        .and_then(|p| p.parse::<libc::pid_t>().ok())
    {
        // SAFETY: a plain kill(2) of the sleep the holder started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A refresh lock file removed by hand while one process holds it and another waits on it:
/// the waiter, once the holder lets go, must not count the removed file's lock as the lock (a
/// third process would make the file anew, lock it too, and both would spend one refresh token).
/// It holds the file the name now names, and a third process is kept out until it lets go.
#[cfg(unix)]
#[test]
fn a_lock_file_removed_while_held_and_waited_on_still_excludes_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oauth-pool.json.0123456789ab.refresh.lock");
    let mut first = spawn_holder(&path);
    let first_line = held_line(&mut first).expect("the first holder took the lock");
    let waiting = {
        let path = path.clone();
        std::thread::spawn(move || FileLock::acquire(&path, Duration::from_secs(60)).unwrap())
    };
    // The waiter has opened the file by now (it polls its lock), and the file goes.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(&path).unwrap();
    end_holder(first, &first_line);
    let waiter = waiting.join().unwrap();
    assert!(
        path.exists(),
        "the waiter locked the file made anew at the path"
    );
    let mut third = spawn_holder(&path);
    assert_eq!(
        held_line(&mut third),
        None,
        "a third process took the lock while the waiter held it"
    );
    assert!(!third.wait().unwrap().success());
    drop(waiter);
    let mut fourth = spawn_holder(&path);
    let line = held_line(&mut fourth).expect("the lock is free once the waiter lets go");
    end_holder(fourth, &line);
}
