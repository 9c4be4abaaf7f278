use sea_orm_migration::{prelude::*, schema::*};

use crate::{m20261123_000001_create_partners::Partners, m20261123_000002_create_jobs::Jobs};

/// The job lifecycle: the model version on jobs (for dedup), webhook endpoints, the delivery
/// outbox and its attempts, reconciliation runs, and partner secrets and admin flags.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .add_column(string_len_null(Lifecycle::ModelVersion, 160))
                    .to_owned(),
            )
            .await?;
        for column in [
            text_null(Lifecycle::WebhookSecret),
            boolean(Lifecycle::IsAdmin).default(false).to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Partners::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        // Dedup: a succeeded job with the same image under the same model version.
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_sha_model_version")
                    .table(Jobs::Table)
                    .col(Jobs::ImageSha256)
                    .col(Lifecycle::ModelVersion)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookEndpoints::Table)
                    .if_not_exists()
                    .col(uuid(WebhookEndpoints::Id).primary_key())
                    .col(uuid(WebhookEndpoints::PartnerId))
                    .col(text(WebhookEndpoints::Url))
                    .col(text_null(WebhookEndpoints::Description))
                    .col(text(WebhookEndpoints::Secret))
                    .col(text_null(WebhookEndpoints::PreviousSecret))
                    .col(timestamp_with_time_zone_null(
                        WebhookEndpoints::PreviousSecretExpiresAt,
                    ))
                    .col(timestamp_with_time_zone_null(
                        WebhookEndpoints::FailingSince,
                    ))
                    .col(timestamp_with_time_zone_null(WebhookEndpoints::DisabledAt))
                    .col(string_len_null(WebhookEndpoints::DisabledReason, 64))
                    .col(timestamp_with_time_zone_null(WebhookEndpoints::DeletedAt))
                    .col(timestamp_with_time_zone(WebhookEndpoints::CreatedAt))
                    .col(timestamp_with_time_zone(WebhookEndpoints::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_webhook_endpoints_partner")
                            .from(WebhookEndpoints::Table, WebhookEndpoints::PartnerId)
                            .to(Partners::Table, Partners::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_endpoints_partner")
                    .table(WebhookEndpoints::Table)
                    .col(WebhookEndpoints::PartnerId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Deliveries::Table)
                    .if_not_exists()
                    .col(uuid(Deliveries::Id).primary_key())
                    .col(uuid(Deliveries::JobId))
                    .col(uuid(Deliveries::PartnerId))
                    .col(uuid_null(Deliveries::EndpointId))
                    .col(text(Deliveries::Url))
                    .col(string_len(Deliveries::EventType, 32))
                    .col(text(Deliveries::Payload))
                    .col(string_len(Deliveries::Status, 16))
                    .col(integer(Deliveries::Attempts).default(0))
                    .col(timestamp_with_time_zone_null(Deliveries::NextAttemptAt))
                    .col(uuid_null(Deliveries::LeaseToken))
                    .col(timestamp_with_time_zone_null(Deliveries::LeaseExpiresAt))
                    .col(integer_null(Deliveries::LastStatusCode))
                    .col(text_null(Deliveries::LastError))
                    .col(timestamp_with_time_zone_null(Deliveries::DeliveredAt))
                    .col(timestamp_with_time_zone(Deliveries::CreatedAt))
                    .col(timestamp_with_time_zone(Deliveries::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_deliveries_job")
                            .from(Deliveries::Table, Deliveries::JobId)
                            .to(Jobs::Table, Jobs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_deliveries_status_next")
                    .table(Deliveries::Table)
                    .col(Deliveries::Status)
                    .col(Deliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_deliveries_job")
                    .table(Deliveries::Table)
                    .col(Deliveries::JobId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(DeliveryAttempts::Table)
                    .if_not_exists()
                    .col(uuid(DeliveryAttempts::Id).primary_key())
                    .col(uuid(DeliveryAttempts::DeliveryId))
                    .col(timestamp_with_time_zone(DeliveryAttempts::AttemptedAt))
                    .col(integer_null(DeliveryAttempts::StatusCode))
                    .col(big_integer(DeliveryAttempts::LatencyMs))
                    .col(text_null(DeliveryAttempts::Error))
                    .col(text_null(DeliveryAttempts::ResponseBody))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_delivery_attempts_delivery")
                            .from(DeliveryAttempts::Table, DeliveryAttempts::DeliveryId)
                            .to(Deliveries::Table, Deliveries::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_delivery_attempts_delivery")
                    .table(DeliveryAttempts::Table)
                    .col(DeliveryAttempts::DeliveryId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ReconcileRuns::Table)
                    .if_not_exists()
                    .col(uuid(ReconcileRuns::Id).primary_key())
                    .col(timestamp_with_time_zone(ReconcileRuns::Slot).unique_key())
                    .col(string_len(ReconcileRuns::Trigger, 16))
                    .col(timestamp_with_time_zone(ReconcileRuns::StartedAt))
                    .col(timestamp_with_time_zone_null(ReconcileRuns::FinishedAt))
                    .col(big_integer(ReconcileRuns::JobsRequeued).default(0))
                    .col(big_integer(ReconcileRuns::JobsFailedStale).default(0))
                    .col(big_integer(ReconcileRuns::DeliveriesRescheduled).default(0))
                    .col(big_integer(ReconcileRuns::EndpointsDisabled).default(0))
                    .col(big_integer(ReconcileRuns::JobsDeleted).default(0))
                    .col(big_integer(ReconcileRuns::ObjectsDeleted).default(0))
                    .col(text_null(ReconcileRuns::Error))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ReconcileRuns::Table.into_iden(),
            DeliveryAttempts::Table.into_iden(),
            Deliveries::Table.into_iden(),
            WebhookEndpoints::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("idx_jobs_sha_model_version")
                    .table(Jobs::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .drop_column(Lifecycle::ModelVersion)
                    .to_owned(),
            )
            .await?;
        for column in [Lifecycle::WebhookSecret, Lifecycle::IsAdmin] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Partners::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Lifecycle {
    ModelVersion,
    WebhookSecret,
    IsAdmin,
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    Id,
    PartnerId,
    Url,
    Description,
    Secret,
    PreviousSecret,
    PreviousSecretExpiresAt,
    FailingSince,
    DisabledAt,
    DisabledReason,
    DeletedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
pub(crate) enum Deliveries {
    Table,
    Id,
    JobId,
    PartnerId,
    EndpointId,
    Url,
    EventType,
    Payload,
    Status,
    Attempts,
    NextAttemptAt,
    LeaseToken,
    LeaseExpiresAt,
    LastStatusCode,
    LastError,
    DeliveredAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum DeliveryAttempts {
    Table,
    Id,
    DeliveryId,
    AttemptedAt,
    StatusCode,
    LatencyMs,
    Error,
    ResponseBody,
}

#[derive(DeriveIden)]
enum ReconcileRuns {
    Table,
    Id,
    Slot,
    Trigger,
    StartedAt,
    FinishedAt,
    JobsRequeued,
    JobsFailedStale,
    DeliveriesRescheduled,
    EndpointsDisabled,
    JobsDeleted,
    ObjectsDeleted,
    Error,
}
