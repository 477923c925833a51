//! `pgsse demo`: a throwaway PostgreSQL, a demo table and page, and the gateway, in one command.

use std::future::Future;

/// Flags of `pgsse demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Use this database instead of starting a throwaway PostgreSQL.
    #[arg(long, env = "PGSSE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Address to serve the demo page and the stream on.
    #[arg(long, env = "PGSSE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("not implemented yet")]
    NotImplemented,
}

pub async fn run(_args: DemoArgs, _shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    Err(DemoError::NotImplemented)
}
