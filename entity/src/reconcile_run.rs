//! One run of the daily reconciliation, with what it fixed.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "reconcile_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The scheduled instant (a manual run's start); unique: one run per slot.
    #[sea_orm(unique)]
    pub slot: DateTimeUtc,
    /// `schedule` or `manual`.
    pub trigger: String,
    pub started_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    pub jobs_requeued: i64,
    pub jobs_failed_stale: i64,
    pub deliveries_rescheduled: i64,
    pub endpoints_disabled: i64,
    pub jobs_deleted: i64,
    pub objects_deleted: i64,
    pub error: Option<String>,
    /// The node running it: its lease token, renewed until `lease_expires_at` while it runs.
    /// Another node takes an unfinished run over once its lease has lapsed.
    pub lease_token: Option<Uuid>,
    pub lease_expires_at: Option<DateTimeUtc>,
    /// How many times another node took the run over after its node stopped renewing.
    pub takeovers: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
