//! Logins that sit in two places, found before the refresh journal has to refuse one of them.
//! A refresh token works once: a login in two pools on this machine (a copied pool file, a
//! `.bak` put back under another name) or twice in one pool is refreshed through one and then
//! logs the other out. `oauth-pool doctor` compares the journal's tags of the refresh tokens
//! (journal.rs), never the tokens, of the pool it checks with those of each other pool file the
//! journal has seen on this machine. Pool files only: a database named in the journal is never
//! connected to from here.

use std::path::Path;

use super::file::FileStore;
use super::journal::{self, Journal};
use crate::pool::Pool;

/// The most pools of the journal looked at: dozens of pool files at most on a machine, each read
/// once (bounded as the pool file is, `FileStore::peek`).
pub const MAX_STORES: usize = 32;

/// One login found in two places.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    /// The account in the pool checked.
    pub email: String,
    /// Where else it is: another pool file, or None for the pool checked itself.
    pub store: Option<String>,
    /// Its name there.
    pub there: String,
}

/// The logins of `pool` (the store the journal knows as `here`) that are also in one of
/// `stores`, or twice in `pool`. A pool that cannot be read (missing, another user's, not a
/// regular file, not a pool) is passed over: nothing about it can be said.
pub fn find(pool: &Pool, here: &str, stores: &[String]) -> Vec<Shared> {
    let mine = tags(pool);
    let mut found = Vec::new();
    for (i, (tag, email)) in mine.iter().enumerate() {
        for (_, twin) in mine[i + 1..].iter().filter(|(t, _)| t == tag) {
            found.push(Shared {
                email: email.clone(),
                store: None,
                there: twin.clone(),
            });
        }
    }
    for store in stores.iter().take(MAX_STORES) {
        let path = Path::new(store);
        if store == here || super::is_database(store) || !path.is_absolute() {
            continue;
        }
        let Ok(Some(other)) = FileStore::new(path).peek() else {
            continue;
        };
        let theirs = tags(&other);
        for (tag, email) in &mine {
            for (_, there) in theirs.iter().filter(|(t, _)| t == tag) {
                found.push(Shared {
                    email: email.clone(),
                    store: Some(store.clone()),
                    there: there.clone(),
                });
            }
        }
    }
    found
}

/// Each login's refresh token tag with its account.
fn tags(pool: &Pool) -> Vec<(String, String)> {
    pool.accounts()
        .filter_map(|a| {
            let refresh = a.refresh.as_ref().filter(|r| !r.is_empty())?;
            Some((journal::tag(refresh), a.email.clone()))
        })
        .collect()
}

/// `find` for the pool `here` with the pools this user's journal has seen. Blocking.
pub fn for_user(pool: &Pool, here: &str) -> Vec<Shared> {
    let stores = Journal::for_user()
        .map(|j| j.stores(MAX_STORES))
        .unwrap_or_default();
    find(pool, here, &stores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn pool(accounts: &[(&str, &str)]) -> String {
        let entries: Vec<String> = accounts
            .iter()
            .map(|(email, refresh)| {
                format!(r#"{{"email":"{email}","refresh":"{refresh}","access":"a","expires":1}}"#)
            })
            .collect();
        format!(r#"{{"anthropic":[{}]}}"#, entries.join(","))
    }

    #[test]
    fn a_login_in_another_pool_file_or_twice_in_this_one_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            fs::write(&p, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            }
            p.display().to_string()
        };
        let here = write("here.json", String::new());
        let other = write("other.json", pool(&[("b@x", "r-two"), ("c@x", "r-none")]));
        let broken = write("broken.json", "{ not a pool".into());
        let missing = dir.path().join("gone.json").display().to_string();
        let checked =
            Pool::parse(pool(&[("a@x", "r-one"), ("a2@x", "r-one"), ("b@x", "r-two")]).as_bytes())
                .unwrap();
        let stores = [
            here.clone(),
            "postgres://u@db/pool".to_string(),
            broken,
            missing,
            "relative.json".to_string(),
            other.clone(),
        ];
        assert_eq!(
            find(&checked, &here, &stores),
            [
                Shared {
                    email: "a@x".into(),
                    store: None,
                    there: "a2@x".into()
                },
                Shared {
                    email: "b@x".into(),
                    store: Some(other.clone()),
                    there: "b@x".into()
                },
            ]
        );
        // The other pool file is only looked at: a wide mode stays as it was.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&other, fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(find(&checked, &here, &stores).len(), 2);
            let mode = fs::metadata(&other).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644);
        }
    }
}
