//! The `roster` server binary: parse config, start telemetry, serve until a signal.

use std::process::ExitCode;

use clap::Parser;
use roster::{
    config::{Command, Config},
    error::Chain,
    startup::{self, Application},
    telemetry,
};

// mimalloc: the request path allocates many small buffers (HTTP/2 frames,
// Redis replies, protobuf strings); measured with roster-bench it is faster
// than glibc's malloc on every call that talks to Redis.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let telemetry = telemetry::init(config.log_format, &config.log_filter);
    let result = match config.command {
        Some(Command::Migrate { check }) => startup::migrate(&config, check)
            .await
            // 3: migrations pending (`--check`), apart from 1 for failures.
            .map(|current| {
                if current {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                }
            }),
        None => async {
            let app = Application::build(config).await?;
            app.run_until(startup::shutdown_signal()).await
        }
        .await
        .map(|()| ExitCode::SUCCESS),
    };
    let code = match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = %Chain(&*error), "roster stopped with an error");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
