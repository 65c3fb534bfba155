//! Which account serves the next request.
//!
//! Order: the session's own account (OpenCode's `x-session-affinity` / `X-Session-Id`; a subagent
//! with `x-parent-session-id` inherits its parent's), else the account this process is already
//! using (sticky: prompt caches are per account, and hopping between accounts looks like abuse),
//! else the highest `priority`, then the least recently used. Past a soft quota threshold in any
//! window that limits the request (5h, 7d, the model's scoped window) the sticky account yields;
//! when every account is past it, the pinned or sticky one stays, and a new choice drains first
//! the one whose binding window resets soonest.

use std::collections::HashSet;

use crate::account::Account;

/// What the policy knows about one account at the time of choosing.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub email: String,
    pub usable: bool,
    pub priority: i64,
    pub last_used: i64,
    /// Utilization (a fraction) and reset (epoch ms) of each window that limits this request
    /// and has not reset yet, from passive header tracking.
    pub windows: Vec<(f64, Option<i64>)>,
}

impl Candidate {
    /// A `lastUsed` ahead of `now` is read as now: written by a process whose clock ran days
    /// fast, it stayed ahead, and the least recently used choice passed the account over
    /// until then.
    pub fn from_account(
        a: &Account,
        usable: bool,
        windows: Vec<(f64, Option<i64>)>,
        now: i64,
    ) -> Self {
        Candidate {
            email: a.email.clone(),
            usable,
            priority: a.priority(),
            last_used: a.last_used_ms().min(now),
            windows,
        }
    }

    fn over(&self, threshold: f64) -> bool {
        self.windows.iter().any(|(u, _)| *u >= threshold)
    }

    /// The reset of the window that binds: the fullest one.
    fn binding_reset(&self) -> Option<i64> {
        self.windows
            .iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .and_then(|(_, r)| *r)
    }
}

pub struct Preference<'a> {
    /// The account pinned to this request's session (or its parent), if any.
    pub session: Option<&'a str>,
    /// The account this process served its last request with.
    pub sticky: Option<&'a str>,
    /// Utilization past which a sticky choice yields (default 0.9).
    pub soft_threshold: f64,
}

pub fn choose<'c>(
    candidates: &'c [Candidate],
    tried: &HashSet<String>,
    pref: &Preference<'_>,
) -> Option<&'c Candidate> {
    let open: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.usable && !tried.contains(&c.email))
        .collect();
    if open.is_empty() {
        return None;
    }
    let below = |c: &&Candidate| !c.over(pref.soft_threshold);
    for wanted in [pref.session, pref.sticky].into_iter().flatten() {
        if let Some(c) = open.iter().find(|c| c.email == wanted) {
            // Stay put unless this account is past the soft threshold and another is not.
            if below(c) || !open.iter().any(below) {
                return Some(c);
            }
        }
    }
    if open.iter().any(below) {
        return open.into_iter().filter(below).min_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.last_used.cmp(&b.last_used))
        });
    }
    // Every account is nearly drained: use first the one whose window resets soonest, so the
    // quota that would expire unused is the quota that gets spent.
    let reset = |c: &Candidate| c.binding_reset().unwrap_or(i64::MAX);
    open.into_iter().min_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(reset(a).cmp(&reset(b)))
            .then(a.last_used.cmp(&b.last_used))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(email: &str, priority: i64, last_used: i64) -> Candidate {
        Candidate {
            email: email.into(),
            usable: true,
            priority,
            last_used,
            windows: Vec::new(),
        }
    }

    fn pref<'a>(session: Option<&'a str>, sticky: Option<&'a str>) -> Preference<'a> {
        Preference {
            session,
            sticky,
            soft_threshold: 0.9,
        }
    }

    #[test]
    fn sticky_then_priority_then_lru() {
        let cs = vec![c("a@x", 0, 10), c("b@x", 0, 5), c("c@x", 1, 50)];
        let none = HashSet::new();
        assert_eq!(choose(&cs, &none, &pref(None, None)).unwrap().email, "c@x");
        assert_eq!(
            choose(&cs, &none, &pref(None, Some("a@x"))).unwrap().email,
            "a@x"
        );
        assert_eq!(
            choose(&cs, &none, &pref(Some("b@x"), Some("a@x")))
                .unwrap()
                .email,
            "b@x"
        );
        let tried: HashSet<String> = ["c@x".to_string()].into();
        assert_eq!(choose(&cs, &tried, &pref(None, None)).unwrap().email, "b@x");
    }

    #[test]
    fn unusable_and_tried_are_skipped() {
        let mut cs = vec![c("a@x", 0, 0), c("b@x", 0, 0)];
        cs[0].usable = false;
        let tried: HashSet<String> = ["b@x".to_string()].into();
        assert!(choose(&cs, &tried, &pref(Some("a@x"), None)).is_none());
    }

    #[test]
    fn soft_threshold_moves_off_a_nearly_drained_account() {
        let mut cs = vec![c("a@x", 0, 0), c("b@x", 0, 0), c("d@x", 0, 0)];
        cs[0].windows = vec![(0.95, Some(1000))];
        cs[2].windows = vec![(0.2, Some(5)), (0.95, Some(10))];
        let none = HashSet::new();
        assert_eq!(
            choose(&cs, &none, &pref(None, Some("a@x"))).unwrap().email,
            "b@x"
        );
        cs[1].windows = vec![(0.99, Some(500))];
        // Everyone is past it: stay sticky; without a sticky account, drain the soonest reset.
        assert_eq!(
            choose(&cs, &none, &pref(None, Some("a@x"))).unwrap().email,
            "a@x"
        );
        assert_eq!(choose(&cs, &none, &pref(None, None)).unwrap().email, "d@x");
        // Priority first: the soonest reset only orders accounts of one priority.
        cs[0].priority = 1;
        assert_eq!(choose(&cs, &none, &pref(None, None)).unwrap().email, "a@x");
    }
}
