//! Whether output may use colour (`--color auto|always|never`), decided once for the process.
//!
//! `auto` (the default) colours a stream only when it is a terminal and `NO_COLOR` is unset or
//! empty (<https://no-color.org>); `always` and `never` override both, `NO_COLOR` included, as an
//! explicit flag should. Machine formats never get colour: the journald and JSON log formats,
//! `--json` and `--csv`.

use std::sync::OnceLock;

/// The `--color` choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set.
    #[default]
    Auto,
    /// Always, also into a pipe or a file.
    Always,
    /// Never.
    Never,
}

static CHOICE: OnceLock<ColorChoice> = OnceLock::new();

/// Sets the choice for the process (the first call wins; `cli::main` makes it).
pub fn set(choice: ColorChoice) {
    let _ = CHOICE.set(choice);
}

/// Whether a stream may get colour, given whether it is a terminal.
pub fn wanted(is_terminal: bool) -> bool {
    decide(
        CHOICE.get().copied().unwrap_or_default(),
        is_terminal,
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn decide(choice: ColorChoice, is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && no_color.is_none_or(|v| v.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_choice_table() {
        use ColorChoice::*;
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        let cases = [
            // choice, terminal, NO_COLOR, colour
            (Auto, true, None, true),
            (Auto, true, empty, true),
            (Auto, true, set, false),
            (Auto, false, None, false),
            (Always, false, set, true),
            (Always, true, None, true),
            (Never, true, None, false),
            (Never, false, None, false),
        ];
        for (choice, tty, no_color, want) in cases {
            assert_eq!(
                decide(choice, tty, no_color),
                want,
                "{choice:?} tty={tty} NO_COLOR={no_color:?}"
            );
        }
    }
}
