//! platescore: scores food photos for nutrition apps.
//!
//! Modules by capability: `api` (HTTP), `intake` (accepting jobs), `limits` (per-partner
//! enqueue rate and queue cap), `store` (the job store and outbox), `queue_pool` (the worker
//! pool over a leased queue), `worker` (scoring queued jobs), `inference` (the scorer),
//! `delivery` (webhooks), `scheduling` (the daily reconciliation), `objects` (image
//! storage), `imaging` (format and header checks), `outbound` (the guard on URLs we
//! contact), `budget` (memory budgets: byte-counted semaphores), `config`, `startup` and
//! `cli`.

pub mod allocator;
pub mod api;
pub mod budget;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod imaging;
pub mod inference;
pub mod intake;
pub mod limits;
pub mod metrics;
pub mod objects;
pub mod outbound;
pub mod queue_pool;
pub mod scheduling;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod worker;
