use std::process::ExitCode;

fn main() -> ExitCode {
    match schedlat::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("schedlat: error: {e:#}");
            ExitCode::from(schedlat::exit_code_for(&e))
        }
    }
}
