//! `login`: stores this machine's device token where the service reads it, after checking it
//! against the deployment.
//!
//! 1. The token is read from standard input (`--token-stdin`: its first line) or asked for on
//!    the terminal without echo ([`rpassword`]); never from the command line, where it would
//!    land in the shell's history and in `ps`.
//! 2. One `GET <deployment>/whoami` with it ([`crate::sink::convex::whoami`]), timed out after
//!    `convex.request_timeout_secs` (at most 15 s).
//! 3. Only when the deployment names a device (or, with a warning, accepts the legacy shared
//!    token) is it written: `OPENCODE_TELEMETRY_INGEST_TOKEN=<token>` in the credentials file
//!    ([`crate::config::credentials_path`], mode 0600 from creation, replaced atomically; on
//!    Linux the systemd unit's `EnvironmentFile=`). A token the deployment rejects, an
//!    unreachable deployment, or a device bound to another machine's device id writes nothing
//!    and exits 1.
//!
//! The token appears in no output, log line or error: messages name the device and the file
//! only.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config::{self, Loaded, Secret, ENV_INGEST_TOKEN};
use crate::sink::convex::whoami::{whoami, WhoAmI};

/// Longest wait for the deployment's answer.
const MAX_WAIT: Duration = Duration::from_secs(15);

/// Longest standard input read for `--token-stdin` (bytes).
const MAX_STDIN_BYTES: u64 = 64 * 1024;

/// `login` (see the module doc). `token_stdin`: read the token from standard input.
///
/// # Errors
/// The credentials file cannot be written; standard input or the terminal cannot be read.
pub async fn login(loaded: &Loaded, token_stdin: bool) -> anyhow::Result<ExitCode> {
    let c = &loaded.config;
    if !c.uses_convex() {
        eprintln!(
            "opencode-telemetry: convex.url is not set: put the deployment's URL into the \
             config file ([convex] url = \"https://<deployment>.convex.site\") first"
        );
        return Ok(ExitCode::from(crate::cli::EXIT_CONFIG));
    }
    let Some(path) = config::credentials_path() else {
        anyhow::bail!("no home directory: there is no place for the credentials file");
    };
    let token = if token_stdin {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_STDIN_BYTES)
            .read_to_string(&mut text)
            .context("reading the token from standard input")?;
        text.lines().next().unwrap_or("").trim().to_string()
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password("device token (input hidden): ")
            .context("reading the token from the terminal")?
            .trim()
            .to_string()
    } else {
        eprintln!(
            "opencode-telemetry: no terminal to ask for the token on; pipe it in with \
             `opencode-telemetry login --token-stdin`"
        );
        return Ok(ExitCode::FAILURE);
    };
    if token.is_empty() {
        eprintln!("opencode-telemetry: no token given; nothing was stored");
        return Ok(ExitCode::FAILURE);
    }
    if !config::storable_token(&token) {
        eprintln!(
            "opencode-telemetry: that is not a device token (one has only letters, digits and \
             -_.~+/=): paste the `token` that `npx convex run devices:create` printed; nothing \
             was stored"
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut convex = c.convex.clone();
    convex.ingest_token = Secret::new(token.clone());
    let origin = crate::sink::convex::url::check(&convex.url)
        .map(|u| crate::sink::convex::url::display(&crate::sink::convex::url::site_url(&u)))
        .unwrap_or_else(|_| convex.url.clone());
    let wait = Duration::from_secs(convex.request_timeout_secs.max(1)).min(MAX_WAIT);
    let answer = whoami(&convex, wait).await;
    let this_machine = crate::daemon::device_id(c)?;
    match &answer {
        WhoAmI::Device {
            name,
            device_id: Some(bound),
        } if *bound != this_machine => {
            eprintln!(
                "opencode-telemetry: the token belongs to device `{name}`, which the deployment \
                 has bound to device id {bound}, but this machine's device id is \
                 {this_machine}: its records would all be rejected. Use this machine's own token \
                 (create one with `npx convex run devices:create '{{\"name\":\"{}\"}}'`); \
                 nothing was stored",
                suggested_name()
            );
            return Ok(ExitCode::FAILURE);
        }
        WhoAmI::Device { name, device_id } => {
            println!(
                "this machine is device `{name}` (id {this_machine}{}) of {origin}",
                if device_id.is_some() {
                    ""
                } else {
                    ", bound with its first record"
                }
            );
        }
        WhoAmI::Legacy => {
            println!(
                "warning: this is the deployment's legacy shared INGEST_TOKEN, not a device \
                 token: it can write any device's rows and stops working when the owner removes \
                 ALLOW_LEGACY_INGEST_TOKEN. Create this machine's own token with `npx convex run \
                 devices:create '{{\"name\":\"{}\"}}'` and run `opencode-telemetry login` again",
                suggested_name()
            );
        }
        WhoAmI::Rejected { .. } => {
            eprintln!(
                "opencode-telemetry: {} at {origin}: create a device token with `npx convex run \
                 devices:create '{{\"name\":\"{}\"}}'` (add --prod for the production \
                 deployment) and run `opencode-telemetry login` again; nothing was stored",
                answer.describe(),
                suggested_name()
            );
            return Ok(ExitCode::FAILURE);
        }
        WhoAmI::Unreachable { .. } => {
            eprintln!(
                "opencode-telemetry: {} at {origin}: check convex.url and the network, then run \
                 `opencode-telemetry login` again; nothing was stored",
                answer.describe()
            );
            return Ok(ExitCode::FAILURE);
        }
        WhoAmI::NoRoute | WhoAmI::Unexpected { .. } => {
            eprintln!(
                "opencode-telemetry: {} at {origin}; nothing was stored",
                answer.describe()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    config::store_ingest_token(&path, &token)
        .with_context(|| format!("writing the credentials file {}", path.display()))?;
    println!("token stored in {} (mode 0600)", path.display());
    if std::env::var(ENV_INGEST_TOKEN).is_ok_and(|v| !v.is_empty() && v != token) {
        println!(
            "note: {ENV_INGEST_TOKEN} is set in this shell's environment and wins over the file \
             for commands run from it; unset it"
        );
    }
    if loaded.file_holds_secret {
        if let Some(p) = &loaded.path {
            println!(
                "note: convex.ingest_token in {} is no longer used (the credentials file wins); \
                 remove it",
                p.display()
            );
        }
    }
    println!("{}", restart_hint());
    Ok(ExitCode::SUCCESS)
}

/// A device name for the `devices:create` hint: the host name with characters outside
/// `[A-Za-z0-9._-]` replaced by `-` (a device name's alphabet), at most 64 characters.
fn suggested_name() -> String {
    let name: String = crate::identity::hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let name = name.trim_start_matches(['.', '_', '-']).to_string();
    if name.is_empty() {
        "this-machine".into()
    } else {
        name
    }
}

fn restart_hint() -> String {
    if cfg!(target_os = "macos") {
        format!(
            "a running service uses it from its next start: `launchctl kickstart -k \
             gui/$(id -u)/{}`",
            crate::install::launchd::LAUNCHD_LABEL
        )
    } else {
        format!(
            "a running service uses it from its next start: `systemctl --user restart {}`",
            crate::install::systemd::UNIT_NAME
        )
    }
}
