//! The fleet store from JavaScript: `store init`, `store copy`, and what `doctor` checks.

use napi_derive::napi;
use serde_json::{json, Value};

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;

use std::collections::HashSet;

use super::{js_error, promise, JsResult};
use crate::account::Account;
use crate::error::Error;
use crate::pool::{Entry, Pool};
use crate::store::crypto::SealKey;
use crate::store::{self, PgStore, Store};
use crate::{config, logging};

fn database_location(explicit: Option<String>) -> Result<String, Error> {
    let location = explicit
        .filter(|l| !l.trim().is_empty())
        .or_else(|| config::env(config::var::STORE).filter(|l| !l.trim().is_empty()))
        .ok_or_else(|| {
            Error::InvalidArgument(
                "store init is for the fleet store: set OAUTH_POOL_STORE=postgres://... or pass the URL".into(),
            )
        })?;
    if !store::is_database(&location) {
        return Err(Error::InvalidArgument(
            "store init takes a postgres:// URL (the pool file needs no init)".into(),
        ));
    }
    Ok(location)
}

/// A store initialized with a key this host does not have, on a host that has none.
fn keyed_elsewhere(shown: &str) -> Error {
    let file = crate::store::crypto::key_file()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "this host's key file".into());
    Error::StoreKey(format!(
        "{shown} was initialized with a key this host does not have: copy the key file of a host that uses it to {file} (0600), or set OAUTH_POOL_STORE_KEY to the same key, then run store init again; no key was created"
    ))
}

/// Creates or migrates the schema and records the key's check value. Without
/// `OAUTH_POOL_STORE_KEY` or a key file, a key file is created (0600) and named in the answer.
#[napi(js_name = "storeInit", ts_return_type = "Promise<any>", catch_unwind)]
pub fn store_init(env: &Env, location: Option<String>) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        logging::init();
        let location = database_location(location).map_err(js_error)?;
        let (key, created) = match SealKey::from_config() {
            Ok(k) => (k, None),
            Err(Error::StoreKey(why)) if why.starts_with("no store key") => {
                // A key file is made only for a database that can be reached: a URL refused
                // or a connection that fails (TLS, auth) leaves no key behind.
                let probe = SealKey::from_bytes(&[0u8; 32], "none").map_err(js_error)?;
                let reach = PgStore::with_key(&location, probe).map_err(js_error)?;
                // A store initialized elsewhere opens only with the key it was made with: a new
                // one made here could never open it, and stayed behind as this host's key file.
                if reach.has_key_check().await.map_err(js_error)? {
                    return Err(js_error(keyed_elsewhere(reach.shown())));
                }
                let (k, path) = SealKey::create_file().map_err(js_error)?;
                (k, Some(path.display().to_string()))
            }
            Err(e) => return Err(js_error(e)),
        };
        let source = key.source.clone();
        let pg = PgStore::with_key(&location, key).map_err(js_error)?;
        let schema = match pg.init().await {
            Ok(schema) => schema,
            // Another host's init, run at the same moment, sealed the check with its key first:
            // nothing was sealed with the one made here, which would only be refused from now on.
            Err(Error::StoreKey(_)) if created.is_some() => {
                if let Some(path) = created {
                    let _ = store::blocking(move || {
                        std::fs::remove_file(&path).map_err(|e| Error::io(&path, "remove", e))
                    })
                    .await;
                }
                return Err(js_error(keyed_elsewhere(pg.shown())));
            }
            Err(e) => return Err(js_error(e)),
        };
        Ok(json!({
            "location": pg.shown(),
            "schema": schema,
            "keySource": source,
            "keyCreated": created,
        }))
    })
}

/// Copies a whole pool from one store to another (file or postgres://, either way), every
/// field and unreadable entry included.
#[napi(js_name = "copyStore", ts_return_type = "Promise<any>", catch_unwind)]
pub fn copy_store(env: &Env, from: String, to: String) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        logging::init();
        let source = Store::open(&from).map_err(js_error)?;
        let target = Store::open(&to).map_err(js_error)?;
        // Tokens a process kept beside a source file (`store::rescue`), or on this host for a
        // source fleet store, are written into it first: copied as it was, the pool's spent
        // refresh token went along, and the copy presented it.
        if let Some(path) = source.rescue_path() {
            let kept = store::blocking(move || Ok(!store::rescue::found(&path).is_empty()))
                .await
                .unwrap_or(false);
            if kept {
                source.update_existing(|_| Ok(())).await.map_err(js_error)?;
            }
        }
        let (pool, stamp) = source.load_stamped().await.map_err(js_error)?;
        // A missing pool file reads as an empty pool everywhere else; copied, it would replace
        // every account at the destination with nothing (a mistyped `--from`).
        if let (None, Some(path)) = (&stamp, source.path()) {
            return Err(js_error(Error::io(
                path,
                "read",
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "it does not exist; nothing was copied",
                ),
            )));
        }
        // What cannot be read in a file is left for the write to judge (a file keeps what it
        // replaced in its `.bak`). A fleet store keeps nothing: unread (a lock held, the server
        // slow), its other hosts' logins were replaced unkept and unnamed.
        let (replaced, there) = match target.load().await {
            Ok(there) => (replaced_logins(&pool, &there), Some(there)),
            // Only an unreachable store's words change: a wrong key (`STORE_KEY`) and the like
            // keep their own code, which says what to mend.
            Err(Error::StoreUnavailable(why)) if target.path().is_none() => {
                return Err(js_error(Error::StoreUnavailable(format!(
                    "{why}; what the copy would replace could not be read, to keep it first: nothing was copied"
                ))))
            }
            Err(e) if target.path().is_none() => return Err(js_error(e)),
            Err(_) => (Replaced::default(), None),
        };
        // A file keeps what it held in its `.bak`; the fleet store keeps nothing, and the
        // replaced logins were gone for good. Kept first: not kept, nothing is replaced.
        let kept = match (&there, target.path()) {
            (Some(there), None) if !replaced.places.is_empty() => Some(
                keep_replaced(there, &replaced, source.path())
                    .await
                    .map_err(js_error)?,
            ),
            _ => None,
        };
        let entries = pool.anthropic.len();
        // Each is now in both stores: the CLI says which one to keep using.
        let logins = pool
            .accounts()
            .filter(|a| !a.is_api_key() && a.refresh.as_ref().is_some_and(|r| !r.is_empty()))
            .count();
        if let Err(e) = target.save(pool).await {
            // The connection lost or silent at the commit: whether it was made is not known,
            // and the kept copy may be the replaced logins' only place. It stays, named.
            if let (Error::StoreUnavailable(why), Some(kept)) = (&e, &kept) {
                return Err(js_error(Error::StoreUnavailable(format!(
                    "{why}; whether the copy was written is not known: the logins it would replace are kept in {} (a pool file, as every copy keeps them; delete it once `oauth-pool list` shows they are where you want them)",
                    kept.display()
                ))));
            }
            // Nothing was replaced: a kept copy would be a second place for those logins.
            if let Some(kept) = kept {
                let _ = store::blocking(move || {
                    let _ = std::fs::remove_file(kept);
                    Ok(())
                })
                .await;
            }
            return Err(js_error(e));
        }
        let kept = kept.map(|k| k.display().to_string());
        let replaced = replaced.names;
        Ok(
            json!({ "from": source.describe(), "to": target.describe(), "entries": entries, "logins": logins, "replaced": replaced, "kept": kept }),
        )
    })
}

/// Writes the entries of `there` that a copy replaces into a pool file of their own (0600,
/// never over another file), beside `beside` (the `--from` file) or else beside the configured
/// pool file: `<pool>.replaced-<UTC time>`. It is a pool file: `OAUTH_POOL_PATH` set to it, or
/// `store copy --from` it, uses them again.
async fn keep_replaced(
    there: &Pool,
    replaced: &Replaced,
    beside: Option<&std::path::Path>,
) -> Result<std::path::PathBuf, Error> {
    let kept = Pool {
        anthropic: replaced
            .places
            .iter()
            .filter_map(|i| there.anthropic.get(*i))
            .cloned()
            .collect(),
        ..Pool::default()
    };
    let bytes = zeroize::Zeroizing::new(kept.to_bytes());
    let pool_path = match beside {
        Some(p) => p.to_path_buf(),
        None => config::pool_path(None)?,
    };
    store::blocking(move || {
        let dir = match pool_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        crate::store::file::create_private_dir(&dir)?;
        let name = pool_path.file_name().unwrap_or_default().to_string_lossy();
        let time: String = crate::account::iso_time(crate::account::now_ms())
            .chars()
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        let mut n = 0;
        loop {
            let path = match n {
                0 => dir.join(format!("{name}.replaced-{time}")),
                n => dir.join(format!("{name}.replaced-{time}-{n}")),
            };
            match crate::store::file::create_whole(&path, &bytes) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => {
                    return Err(Error::io(
                        path,
                        "keep the accounts the copy would replace (nothing was copied)",
                        e,
                    ))
                }
                Ok(()) => return Ok(path),
            }
        }
    })
    .await
}

/// What a copy replaces at its destination: `names` to say, the entries' `places` there.
#[derive(Default)]
struct Replaced {
    names: Vec<String>,
    places: Vec<usize>,
}

/// A copy replaces what `to` held: the accounts there that `from` holds neither under their
/// name nor with their credential are gone from it (another host's logins in a fleet store a
/// second host's file was copied over), and so are its unreadable entries that `from` does not
/// hold as they are (a store row that no longer opens, its sealed tokens still in it: it went
/// unnamed and unkept). Named, so that the person knows to log them in again (or to take them
/// from the destination's `.bak`, for a file); an unreadable one as `#<place> <email>`.
fn replaced_logins(pool: &Pool, there: &Pool) -> Replaced {
    let tags: HashSet<String> = pool
        .accounts()
        .filter_map(Account::credential_tag)
        .collect();
    let names: HashSet<String> = pool
        .accounts()
        .map(|a| crate::account::normalize_email(&a.email))
        .collect();
    let unreadable: Vec<&Value> = pool
        .anthropic
        .iter()
        .filter_map(|e| match e {
            Entry::Invalid { raw, .. } => Some(raw),
            Entry::Valid(_) => None,
        })
        .collect();
    let mut replaced = Replaced::default();
    for (place, entry) in there.anthropic.iter().enumerate() {
        let name = match entry {
            Entry::Valid(a)
                if a.credential_tag().is_some_and(|t| !tags.contains(&t))
                    && !names.contains(&crate::account::normalize_email(&a.email)) =>
            {
                a.email.clone()
            }
            Entry::Invalid { raw, .. } if !unreadable.contains(&raw) => {
                format!("#{place} {}", raw["email"].as_str().unwrap_or("?"))
            }
            _ => continue,
        };
        replaced.names.push(name);
        replaced.places.push(place);
    }
    replaced
}

/// For `doctor`: can the store be reached, is its schema current, does the key open it.
#[napi(js_name = "storeCheck", ts_return_type = "Promise<any>", catch_unwind)]
pub fn store_check(env: &Env, path: Option<String>) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        logging::init();
        let store = match Store::from_config(path.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                return Ok(json!({ "ok": false, "code": e.code(), "message": e.to_string() }))
            }
        };
        let Store::Postgres(pg) = &store else {
            return Ok(json!({ "ok": true, "kind": "file", "location": store.describe() }));
        };
        let schema = match pg.schema_text().await {
            Ok(text) => text.map(|t| pg.schema_number(&t)).transpose(),
            // Reached, and its tables are another program's: said as it is, not as "cannot reach".
            Err(e) => {
                let reachable = matches!(e, crate::error::Error::StoreCorrupt(_));
                return Ok(
                    json!({ "ok": false, "kind": "postgres", "location": pg.shown(), "reachable": reachable, "code": e.code(), "message": e.to_string() }),
                );
            }
        };
        let schema = match schema {
            Ok(v) => v.unwrap_or(0),
            Err(e) => {
                return Ok(
                    json!({ "ok": false, "kind": "postgres", "location": pg.shown(), "reachable": true, "code": e.code(), "message": e.to_string() }),
                )
            }
        };
        let key = pg.check_key().await;
        // Null when it could not be asked: the reach and key checks say why.
        let missing = pg.missing_privileges().await.ok().map(|tables| {
            tables
                .into_iter()
                .map(|(table, privileges)| json!({ "table": table, "privileges": privileges }))
                .collect::<Vec<_>>()
        });
        let clock = pg.clock_offset().await.ok();
        Ok(json!({
            "ok": key.is_ok() && schema == i64::from(store::postgres::SCHEMA_VERSION)
                && missing.as_ref().is_some_and(Vec::is_empty),
            "kind": "postgres",
            "location": pg.shown(),
            "reachable": true,
            "schema": schema,
            "expectedSchema": store::postgres::SCHEMA_VERSION,
            "key": key.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
            "code": key.err().map(|e| e.code()),
            "missingPrivileges": missing,
            "clockOffsetMs": clock.map(|(offset, _)| offset),
            "clockRoundTripMs": clock.map(|(_, rtt)| rtt),
        }))
    })
}
