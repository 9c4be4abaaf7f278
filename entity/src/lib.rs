//! Database entities of platescore. This crate depends on nothing else of ours.

pub mod job;
pub mod partner;

pub mod prelude {
    pub use super::job::{Entity as Job, JobStatus};
    pub use super::partner::Entity as Partner;
}
