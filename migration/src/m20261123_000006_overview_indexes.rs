use sea_orm_migration::prelude::*;

use crate::m20261123_000002_create_jobs::Jobs;

/// Indexes for the operators' overview: jobs enqueued and finished per minute (the latter
/// covering, with `created_at` for the latency), the latest failures, and the last failed
/// delivery to an endpoint. `IF NOT EXISTS`, so a large PostgreSQL database can have them
/// built beforehand with `CREATE INDEX CONCURRENTLY` under the same names.
#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATED_AT: &str = "idx_jobs_created_at";
const STATUS_FINISHED_AT: &str = "idx_jobs_status_finished_at_created_at";
const ENDPOINT_UPDATED_AT: &str = "idx_deliveries_endpoint_updated_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(CREATED_AT)
                    .table(Jobs::Table)
                    .col(Jobs::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(STATUS_FINISHED_AT)
                    .table(Jobs::Table)
                    .col(Jobs::Status)
                    .col(Jobs::FinishedAt)
                    .col(Jobs::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ENDPOINT_UPDATED_AT)
                    .table(Deliveries::Table)
                    .col(Deliveries::EndpointId)
                    .col(Deliveries::UpdatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(ENDPOINT_UPDATED_AT)
                    .table(Deliveries::Table)
                    .to_owned(),
            )
            .await?;
        for name in [STATUS_FINISHED_AT, CREATED_AT] {
            manager
                .drop_index(Index::drop().name(name).table(Jobs::Table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    EndpointId,
    UpdatedAt,
}
