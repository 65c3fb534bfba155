//! Events told at once to JavaScript, while the request they concern goes on (a hold beginning:
//! it may last hours, and what travels with the answer arrived only when it ended).

use std::sync::Arc;

use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;

use crate::engine::{Event, Notice};

/// Called with one event as JSON. Weak: a listener keeps no process alive (the request it
/// reports on does, while it is pending); not callee-handled: the callback gets the text alone.
type Callback = ThreadsafeFunction<String, (), String, Status, false, true>;

/// One per pool fetch (or OpenCode 2 setup) with a listener, handed to each of its requests:
/// `new EventListener((json) => ...)`. A callback that throws is the caller's to catch.
#[napi]
pub struct EventListener {
    callback: Arc<Callback>,
}

#[napi]
impl EventListener {
    #[napi(constructor, catch_unwind)]
    pub fn new(callback: Callback) -> Self {
        EventListener {
            callback: Arc::new(callback),
        }
    }
}

impl EventListener {
    /// What the engine calls: the event serialized and queued for the JavaScript thread.
    pub(crate) fn notice(&self) -> Notice {
        let callback = self.callback.clone();
        Arc::new(move |event: Event| {
            if let Ok(json) = serde_json::to_string(&event) {
                let _ = callback.call(json, ThreadsafeFunctionCallMode::NonBlocking);
            }
        })
    }
}
