use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261123_000002_create_jobs::Jobs;

/// Columns for the work queue: when a job is due, and the lease of the worker holding it.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            timestamp_with_time_zone_null(Leases::RunAt),
            uuid_null(Leases::LeaseToken),
            timestamp_with_time_zone_null(Leases::LeaseExpiresAt),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Jobs::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        // Jobs from before this migration are due now.
        manager
            .exec_stmt(
                Query::update()
                    .table(Jobs::Table)
                    .value(Leases::RunAt, Expr::col(Jobs::CreatedAt))
                    .and_where(Expr::col(Leases::RunAt).is_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_status_run_at")
                    .table(Jobs::Table)
                    .col(Jobs::Status)
                    .col(Leases::RunAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_jobs_status_run_at")
                    .table(Jobs::Table)
                    .to_owned(),
            )
            .await?;
        for column in [Leases::RunAt, Leases::LeaseToken, Leases::LeaseExpiresAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Jobs::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
pub(crate) enum Leases {
    RunAt,
    LeaseToken,
    LeaseExpiresAt,
}
