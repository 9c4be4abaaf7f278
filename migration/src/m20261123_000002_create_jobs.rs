use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261123_000001_create_partners::Partners;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .if_not_exists()
                    .col(uuid(Jobs::Id).primary_key())
                    .col(uuid(Jobs::PartnerId))
                    .col(string_len(Jobs::Status, 16))
                    .col(text_null(Jobs::ImageUrl))
                    .col(string_len_null(Jobs::ImageKey, 200))
                    .col(string_len_null(Jobs::ImageSha256, 64))
                    .col(big_integer_null(Jobs::ImageBytes))
                    .col(string_len_null(Jobs::ImageFormat, 8))
                    .col(integer_null(Jobs::ImageWidth))
                    .col(integer_null(Jobs::ImageHeight))
                    .col(text_null(Jobs::WebhookUrl))
                    .col(json_binary_null(Jobs::Metadata))
                    .col(string_len_null(Jobs::ModelId, 100))
                    .col(string_len_null(Jobs::IdempotencyKey, 255))
                    .col(string_len(Jobs::RequestFingerprint, 64))
                    .col(json_binary_null(Jobs::Result))
                    .col(string_len_null(Jobs::ErrorCode, 64))
                    .col(text_null(Jobs::ErrorMessage))
                    .col(integer(Jobs::Attempts).default(0))
                    .col(timestamp_with_time_zone(Jobs::CreatedAt))
                    .col(timestamp_with_time_zone(Jobs::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Jobs::StartedAt))
                    .col(timestamp_with_time_zone_null(Jobs::FinishedAt))
                    .col(big_integer_null(Jobs::ProcessingTimeMs))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_jobs_partner")
                            .from(Jobs::Table, Jobs::PartnerId)
                            .to(Partners::Table, Partners::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // A partner's jobs, newest first, optionally by status.
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_partner_id")
                    .table(Jobs::Table)
                    .col(Jobs::PartnerId)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_partner_status_id")
                    .table(Jobs::Table)
                    .col(Jobs::PartnerId)
                    .col(Jobs::Status)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        // NULL keys are distinct in a unique index on both SQLite and PostgreSQL.
        manager
            .create_index(
                Index::create()
                    .name("uq_jobs_partner_idempotency_key")
                    .table(Jobs::Table)
                    .col(Jobs::PartnerId)
                    .col(Jobs::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Work queue order, and lookups of objects still referenced.
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_status_created_at")
                    .table(Jobs::Table)
                    .col(Jobs::Status)
                    .col(Jobs::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_image_key")
                    .table(Jobs::Table)
                    .col(Jobs::ImageKey)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Jobs {
    Table,
    Id,
    PartnerId,
    Status,
    ImageUrl,
    ImageKey,
    ImageSha256,
    ImageBytes,
    ImageFormat,
    ImageWidth,
    ImageHeight,
    WebhookUrl,
    Metadata,
    ModelId,
    IdempotencyKey,
    RequestFingerprint,
    Result,
    ErrorCode,
    ErrorMessage,
    Attempts,
    CreatedAt,
    UpdatedAt,
    StartedAt,
    FinishedAt,
    ProcessingTimeMs,
}
