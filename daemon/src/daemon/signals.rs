//! SIGTERM/SIGINT (shutdown) and SIGHUP (reload).

use tokio::sync::mpsc;

/// Sends `()` on `tx` for every SIGHUP (Unix only; elsewhere nothing is sent).
pub(crate) fn forward_hangups(tx: mpsc::UnboundedSender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send(()).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading the config needs a restart")
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C elsewhere).
///
/// The handlers are installed when this is called, not when the future is first polled: the
/// daemon polls it only once its set-up is done (outbox, sinks, status file), and a SIGTERM in
/// between would otherwise meet the default action and kill the process without a clean
/// shutdown. Call it from inside the tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
                },
                (Some(mut term), None) => {
                    term.recv().await;
                    tracing::info!(signal = "SIGTERM", "signal received");
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    tracing::info!(signal = "SIGINT", "signal received");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!(signal = "ctrl-c", "signal received");
        }
    }
}
