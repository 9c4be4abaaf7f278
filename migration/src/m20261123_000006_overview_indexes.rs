use sea_orm_migration::prelude::*;

use crate::m20261123_000002_create_jobs::Jobs;

/// Indexes for the operators' overview: jobs enqueued and finished per minute, the latest
/// failures, and the last attempt at a failing endpoint.
#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATED_AT: &str = "idx_jobs_created_at";
const STATUS_FINISHED_AT: &str = "idx_jobs_status_finished_at";
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
