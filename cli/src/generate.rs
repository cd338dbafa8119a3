//! `trib completions SHELL` and `trib man`: generated from the command definitions, so
//! they never drift from what the tool accepts.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::error::CliError;
use crate::{Cli, Io};

pub(crate) fn completions(shell: clap_complete::Shell, io: &mut Io) -> Result<(), CliError> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "trib", &mut io.stdout);
    Ok(())
}

/// Writes trib.1 and one page per command and subcommand (trib-streams-create.1, ...).
pub(crate) fn man_pages(dir: &Path, io: &mut Io) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::io(&format!("creating {}", dir.display()), &e))?;
    let command = Cli::command();
    clap_mangen::generate_to(command, dir)
        .map_err(|e| CliError::io(&format!("writing man pages to {}", dir.display()), &e))?;
    writeln!(io.stderr, "wrote man pages to {}", dir.display())
        .map_err(|e| CliError::io("writing standard error", &e))
}
