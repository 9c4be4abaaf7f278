use sea_orm_migration::{prelude::*, schema::*};

/// A lease on each reconciliation run, so another node can take over a slot whose node
/// died: the holder's token, when its lease ends (renewed while it runs), and how many times
/// the slot was taken over. Rows from before have no lease: an unfinished one counts as
/// lapsed.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            uuid_null(ReconcileRuns::LeaseToken),
            timestamp_with_time_zone_null(ReconcileRuns::LeaseExpiresAt),
            integer(ReconcileRuns::Takeovers).default(0).to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ReconcileRuns::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            ReconcileRuns::LeaseToken,
            ReconcileRuns::LeaseExpiresAt,
            ReconcileRuns::Takeovers,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ReconcileRuns::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum ReconcileRuns {
    Table,
    LeaseToken,
    LeaseExpiresAt,
    Takeovers,
}
