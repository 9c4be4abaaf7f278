//! Database entities of platescore. This crate depends on nothing else of ours.

pub mod delivery;
pub mod delivery_attempt;
pub mod erased_job;
pub mod job;
pub mod partner;
pub mod reconcile_run;
pub mod webhook_endpoint;

pub mod prelude {
    pub use super::delivery::{DeliveryStatus, Entity as Delivery};
    pub use super::delivery_attempt::Entity as DeliveryAttempt;
    pub use super::erased_job::Entity as ErasedJob;
    pub use super::job::{Entity as Job, JobStatus};
    pub use super::partner::Entity as Partner;
    pub use super::reconcile_run::Entity as ReconcileRun;
    pub use super::webhook_endpoint::Entity as WebhookEndpoint;
}
