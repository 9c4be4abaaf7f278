use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261123_000001_create_partners::Partners;

/// A partner's own enqueue limits, each overriding the configured default when set: the
/// request rate (per second), its burst, and the cap on jobs queued or in progress.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            Limits::RateLimitPerSecond,
            Limits::RateLimitBurst,
            Limits::MaxQueuedJobs,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Partners::Table)
                        .add_column(integer_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            Limits::RateLimitPerSecond,
            Limits::RateLimitBurst,
            Limits::MaxQueuedJobs,
        ] {
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
enum Limits {
    RateLimitPerSecond,
    RateLimitBurst,
    MaxQueuedJobs,
}
