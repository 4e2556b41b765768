//! The `roster` server binary: parse config, start telemetry, serve until a signal.

use std::process::ExitCode;

use clap::Parser;
use roster::{
    config::Config,
    error::Chain,
    startup::{self, Application},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format, &config.log_filter);
    let result = async {
        let app = Application::build(config).await?;
        app.run_until(startup::shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %Chain(&*error), "roster stopped with an error");
            ExitCode::FAILURE
        }
    }
}
