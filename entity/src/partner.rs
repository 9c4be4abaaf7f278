//! A partner: an app that calls the API with its own key.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "partners")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    /// The first characters of the key, safe to show in listings.
    pub key_prefix: String,
    /// Lowercase hex SHA-256 of the whole key; the key itself is never stored.
    #[sea_orm(unique)]
    pub key_hash: String,
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
    /// `whsec_…` signing jobs delivered to a per-job `webhook_url`; made on first use.
    pub webhook_secret: Option<String>,
    /// Admin keys may read operator endpoints (`/admin/…`).
    pub is_admin: bool,
    /// After a rotation, the previous key's shown characters, its hash, and when it stops
    /// working.
    pub previous_key_prefix: Option<String>,
    pub previous_key_hash: Option<String>,
    pub previous_key_expires_at: Option<DateTimeUtc>,
    /// Enqueue requests per second this partner may make; the configured default when null.
    pub rate_limit_per_second: Option<i32>,
    /// Requests this partner may make at once above its rate; the configured default when null.
    pub rate_limit_burst: Option<i32>,
    /// Jobs this partner may have queued or in progress; the configured default when null.
    pub max_queued_jobs: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::job::Entity")]
    Job,
}

impl Related<super::job::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Job.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
