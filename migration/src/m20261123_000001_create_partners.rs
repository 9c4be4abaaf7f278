use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Partners::Table)
                    .if_not_exists()
                    .col(uuid(Partners::Id).primary_key())
                    .col(string_len(Partners::Name, 200))
                    .col(string_len(Partners::KeyPrefix, 32))
                    .col(string_len_uniq(Partners::KeyHash, 64))
                    .col(timestamp_with_time_zone(Partners::CreatedAt))
                    .col(timestamp_with_time_zone_null(Partners::RevokedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Partners::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Partners {
    Table,
    Id,
    Name,
    KeyPrefix,
    KeyHash,
    CreatedAt,
    RevokedAt,
}
