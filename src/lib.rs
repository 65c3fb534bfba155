//! opencode-oauth-pool's native core. Everything below is plain Rust with its own `cargo test`s;
//! `binding` is the napi edge, which converts arguments and errors and nothing else.
//!
//! - `store`: where the pool lives (the pool file), locked, atomic, never lost.
//! - `account`: the pool's data model.
//! - `oauth`: PKCE, code exchange, refresh, the account's email.
//! - `engine`: the policy: who serves, with which credential, what an answer means.
//! - `fetch` + `body`: the Rust driver that moves the bytes (reqwest) and streams them back.
//! - `manage`: account changes and the views people read.
//! - `echo`: the presented credential taken back out of answers.
//! - `http`, `config`, `fsread`, `secret`, `error`, `logging`: the plumbing.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod account;
pub mod body;
pub mod coding;
pub mod config;
pub mod echo;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod fsread;
pub mod gateway;
pub mod http;
pub mod logging;
pub mod manage;
pub mod oauth;
pub mod pool;
pub mod printable;
pub mod runtime;
pub mod secret;
pub mod settings;
pub mod store;
pub mod unique_keys;
pub mod upload;
pub mod wait;

pub mod binding;
