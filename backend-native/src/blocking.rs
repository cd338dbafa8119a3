//! How the engine waits for an fsync from async code (a `sync`-mode send or commit): on
//! tokio's blocking threads, so a slow disk never stalls the threads that run tasks.
//! Writes that only reach the page cache run inline: handing them over costs more.

use tributary_core::{Error, ErrorKind, Result};

/// Runs `work` on a blocking thread and waits for it. Cancel safe in the sense that
/// dropping the future does not stop `work`: it runs to its end either way.
///
/// # Errors
///
/// `work`'s error, or `Backend` if it panicked or the runtime is shutting down.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(Error::new(
            ErrorKind::Backend,
            format!("a blocking task failed: {e}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_off_the_async_thread_and_its_result_comes_back() {
        let caller = std::thread::current().id();
        let ran_on = blocking(move || Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(ran_on, caller);
        let err = blocking(|| -> Result<()> { Err(Error::new(ErrorKind::Io, "disk gone")) })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        #[allow(clippy::panic)]
        let panicked = blocking(|| -> Result<()> { panic!("bug") }).await.unwrap_err();
        assert_eq!(panicked.kind(), ErrorKind::Backend);
    }
}
