//! The handle of one record handed over with [`Producer::enqueue`](crate::Producer::enqueue):
//! where the application learns the record's fate, when it wants to.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::{Error, ErrorKind, Result};
use crate::record::Delivery;

/// The outcome of one record handed over with
/// [`Producer::enqueue`](crate::Producer::enqueue): a future of its [`Delivery`].
///
/// Await it, check it now and then with [`try_result`](DeliveryHandle::try_result), or
/// drop it: dropping the handle never cancels the record, which is sent all the same
/// (its outcome is then known only to [`Producer::flush`](crate::Producer::flush),
/// which waits for it).
///
/// It resolves to the delivery once the engine has acknowledged the record, or to the
/// error that ended it: `InvalidInput` or `NotFound` for a record the engine refused
/// without writing, a retryable kind (`Unavailable`, `Timeout`, `Throttled`) when the
/// engine gave up without writing it, and `Indeterminate` where it may have been
/// written (a request timed out in flight; the producer's task stopped, for example
/// with its runtime, before the engine answered).
#[must_use = "a handle does nothing unless awaited or polled; drop it to ignore the outcome"]
pub struct DeliveryHandle {
    state: State,
    /// Engine and operation named on an error (see [`Error::in_operation`]).
    context: Option<(&'static str, &'static str)>,
}

enum State {
    Done(Option<Result<Delivery>>),
    Waiting(oneshot::Receiver<Result<Delivery>>),
    Future(Pin<Box<dyn Future<Output = Result<Delivery>> + Send>>),
}

impl fmt::Debug for DeliveryHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Done(Some(Ok(_))) => "delivered",
            State::Done(Some(Err(_))) => "failed",
            State::Done(None) => "taken",
            State::Waiting(_) | State::Future(_) => "pending",
        };
        f.debug_struct("DeliveryHandle").field("state", &state).finish()
    }
}

impl DeliveryHandle {
    /// A handle that is already resolved, for engines that write at once.
    pub fn ready(result: Result<Delivery>) -> Self {
        Self {
            state: State::Done(Some(result)),
            context: None,
        }
    }

    /// A handle resolved by the returned [`DeliverySender`]. If the sender is dropped
    /// without a result, the handle resolves to `Indeterminate`.
    pub fn channel() -> (DeliverySender, Self) {
        let (tx, rx) = oneshot::channel();
        (
            DeliverySender(tx),
            Self {
                state: State::Waiting(rx),
                context: None,
            },
        )
    }

    /// A handle that resolves when `future` does: for engines whose client already has a
    /// future per record.
    pub fn from_future(future: impl Future<Output = Result<Delivery>> + Send + 'static) -> Self {
        Self {
            state: State::Future(Box::pin(future)),
            context: None,
        }
    }

    /// Names `engine` and `operation` on the error this handle may resolve to, unless
    /// the error already names them (see [`Error::in_operation`]).
    pub fn in_operation(mut self, engine: &'static str, operation: &'static str) -> Self {
        self.context.get_or_insert((engine, operation));
        self
    }

    /// Whether the outcome is known (then awaiting the handle returns at once), without
    /// taking it and without waiting.
    pub fn is_done(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let result = match &mut self.state {
            State::Done(_) => return true,
            State::Waiting(rx) => match Pin::new(rx).poll(&mut cx) {
                Poll::Pending => return false,
                Poll::Ready(Ok(result)) => result,
                Poll::Ready(Err(_)) => Err(abandoned()),
            },
            State::Future(future) => match future.as_mut().poll(&mut cx) {
                Poll::Pending => return false,
                Poll::Ready(result) => result,
            },
        };
        self.state = State::Done(Some(result));
        true
    }

    /// The outcome if it is known, without waiting; `None` while the record is in
    /// flight. The outcome is handed out once: after it was, this returns an error of
    /// kind `InvalidInput`, as does awaiting the handle.
    pub fn try_result(&mut self) -> Option<Result<Delivery>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(self).poll(&mut cx) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        }
    }
}

impl Future for DeliveryHandle {
    type Output = Result<Delivery>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match &mut self.state {
            State::Done(result) => result.take().unwrap_or_else(|| Err(taken())),
            State::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(result)) => result,
                Poll::Ready(Err(_)) => Err(abandoned()),
            },
            State::Future(future) => match future.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result,
            },
        };
        self.state = State::Done(None);
        Poll::Ready(match self.context {
            Some((engine, operation)) => result.map_err(|e| e.in_operation(engine, operation)),
            None => result,
        })
    }
}

/// Resolves one [`DeliveryHandle`]; engines hold one per record in flight.
#[derive(Debug)]
pub struct DeliverySender(oneshot::Sender<Result<Delivery>>);

impl DeliverySender {
    /// Hands the outcome to the handle (ignored if the handle was dropped).
    pub fn resolve(self, result: Result<Delivery>) {
        let _ = self.0.send(result);
    }
}

fn taken() -> Error {
    Error::invalid_input("this record's outcome was already taken from its handle")
}

fn abandoned() -> Error {
    Error::new(
        ErrorKind::Indeterminate,
        "the producer stopped before the engine answered for this record: it may have been written",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Offset, PartitionId};

    fn delivery(offset: u64) -> Delivery {
        Delivery {
            partition: PartitionId::from_index(0),
            offset: Offset::new(offset),
            timestamp: None,
        }
    }

    #[tokio::test]
    async fn a_channel_handle_resolves_once_with_what_the_sender_gives() {
        let (tx, mut handle) = DeliveryHandle::channel();
        assert!(handle.try_result().is_none());
        assert!(!handle.is_done());
        tx.resolve(Ok(delivery(7)));
        assert!(
            handle.is_done() && handle.is_done(),
            "asking does not take the outcome"
        );
        assert_eq!(handle.try_result().unwrap().unwrap().offset, Offset::new(7));
        assert_eq!(handle.await.unwrap_err().kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn a_dropped_sender_leaves_the_outcome_indeterminate() {
        let (tx, handle) = DeliveryHandle::channel();
        drop(tx);
        assert_eq!(handle.await.unwrap_err().kind(), ErrorKind::Indeterminate);
    }

    #[tokio::test]
    async fn ready_and_future_handles_resolve_to_their_results() {
        let ready = DeliveryHandle::ready(Err(Error::not_found("no stream")));
        assert_eq!(ready.await.unwrap_err().kind(), ErrorKind::NotFound);
        let (tx, rx) = oneshot::channel::<u64>();
        let mut later = DeliveryHandle::from_future(async move { Ok(delivery(rx.await.unwrap_or(0))) });
        assert!(later.try_result().is_none());
        tx.send(3).unwrap();
        assert_eq!(later.await.unwrap().offset, Offset::new(3));
    }
}
