//! Panic capture: a phase, or an observer, that panics is recorded, never propagated, so
//! the engine still publishes the phase and the callers waiting on it go on.

use super::PhaseId;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning a panic into `Err(message)`.
pub(super) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(&*payload))
}

/// Calls one hook of a [`PhaseObserver`]. A panic in it is caught (and logged with the
/// `tracing` feature), so the engine still publishes the phase and its waiters go on.
pub(super) fn notify<P: PhaseId>(phase: P, hook: &'static str, call: impl FnOnce()) {
    if let Err(message) = catch(call) {
        #[cfg(feature = "tracing")]
        tracing::warn!(
            phase = phase.name(),
            hook,
            panic = %message,
            "phase observer panicked; ignored"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (phase, hook, message);
    }
}

/// Polls a future, turning a panic into `Err(message)`.
pub(super) struct CatchUnwind<F>(pub(super) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(&*payload))),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{catch, panic_message, CatchUnwind};
    use core::future::Future;
    use core::pin::pin;
    use core::task::{Context, Poll, Waker};

    #[test]
    fn messages_of_str_string_and_other_payloads() {
        assert_eq!(catch(|| panic!("plain")), Err::<(), _>("plain".to_owned()));
        let n = 3;
        assert_eq!(
            catch(|| panic!("formatted {n}")),
            Err::<(), _>("formatted 3".to_owned())
        );
        assert_eq!(panic_message(&42_u8), "non-string panic payload");
        assert_eq!(catch(|| 7), Ok(7));
    }

    #[test]
    fn a_panicking_future_becomes_an_error() {
        let mut future = pin!(CatchUnwind(Box::pin(async { panic!("in poll") })));
        let mut cx = Context::from_waker(Waker::noop());
        let polled: Poll<Result<(), String>> = future.as_mut().poll(&mut cx);
        assert_eq!(polled, Poll::Ready(Err("in poll".to_owned())));
    }
}
