//! Integration tests: the real server on a random port, spoken to over HTTP.

mod auth;
mod connections;
mod contract;
mod dashboard;
mod enqueue;
mod errors;
mod fairness;
mod health;
mod helpers;
mod lifecycle;
mod limits;
mod models;
mod openapi;
mod operations;
mod queue;
mod races;
mod receiver;
mod reconcile;
mod status;
