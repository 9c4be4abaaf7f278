//! A scoring job: one image, its partner, its state and, once done, its result.

use sea_orm::entity::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum JobStatus {
    #[sea_orm(string_value = "queued")]
    Queued,
    #[sea_orm(string_value = "in_progress")]
    InProgress,
    #[sea_orm(string_value = "succeeded")]
    Succeeded,
    #[sea_orm(string_value = "failed")]
    Failed,
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    /// A UUIDv7, so ids sort by creation time.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub partner_id: Uuid,
    pub status: JobStatus,
    /// Set when the partner gave a URL; the worker fetches it.
    pub image_url: Option<String>,
    /// Object-store key of the uploaded bytes (content-addressed).
    pub image_key: Option<String>,
    /// Lowercase hex SHA-256 of the image bytes, once known.
    pub image_sha256: Option<String>,
    pub image_bytes: Option<i64>,
    /// `jpeg`, `png` or `webp`, sniffed from the bytes.
    pub image_format: Option<String>,
    pub image_width: Option<i32>,
    pub image_height: Option<i32>,
    pub webhook_url: Option<String>,
    pub metadata: Option<Json>,
    pub model_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// The partner's own id for the job, unique per partner.
    pub client_reference: Option<String>,
    /// Hex SHA-256 over the request's content, to tell an idempotent retry from a conflict.
    pub request_fingerprint: String,
    pub result: Option<Json>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub attempts: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub processing_time_ms: Option<i64>,
    /// When the job is next due for a worker (set on every insert and retry).
    pub run_at: Option<DateTimeUtc>,
    /// The lease of the worker holding the job; only its holder may finish it.
    pub lease_token: Option<Uuid>,
    pub lease_expires_at: Option<DateTimeUtc>,
    /// The model version that scored the job; with `image_sha256`, the key for reusing results.
    pub model_version: Option<String>,
    /// Diet tags that shape the tips, comma-separated and sorted (`low_sodium,vegan`).
    pub diets: Option<String>,
    /// Language of the tips (`en` when absent).
    pub lang: Option<String>,
    /// The queue's fair order: claims take the lowest turn first (see the store's `fair`).
    pub turn: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::partner::Entity",
        from = "Column::PartnerId",
        to = "super::partner::Column::Id",
        on_delete = "Cascade"
    )]
    Partner,
    #[sea_orm(has_many = "super::delivery::Entity")]
    Delivery,
}

impl Related<super::partner::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Partner.def()
    }
}

impl Related<super::delivery::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Delivery.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
