use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match platescore::cli::run(platescore::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
