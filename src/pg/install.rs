//! The SQL a DBA installs, embedded from `sql/` so the binary and the repository never disagree.

use super::PgError;

pub const INSTALL_SQL: &str = include_str!("../../sql/install.sql");
pub const UNINSTALL_SQL: &str = include_str!("../../sql/uninstall.sql");

/// Runs one of the scripts above in a single round trip (each script is one transaction).
pub async fn apply(cfg: &tokio_postgres::Config, script: &str) -> Result<(), PgError> {
    let client = super::connect(cfg).await?;
    client.batch_execute(script).await?;
    Ok(())
}
