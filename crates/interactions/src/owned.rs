//! The interactions this replica owns, so that its own late-reply worker learns what the
//! owner decided without reading the decisions bucket.
//!
//! The replies stream captures every handler reply, in time or not, and the worker reads
//! each one. For a reply that was the HTTP response it must find the owner's `answered`
//! record; but the worker gets the reply at the same moment as the owner, so it usually
//! read the record before the owner had written it, found only the claim, and put the
//! reply back for the rest of [`DECISION_WAIT`]: every handled interaction cost a second
//! delivery and a second record read, five seconds later.
//!
//! Now the owner registers the interaction when it claims it, and says `answered` once
//! JetStream has stored that record. A worker of the same replica that reads the reply
//! meanwhile waits for that word (bounded) instead of reading the bucket:
//!
//! | the owner …                          | the worker …                                  |
//! |--------------------------------------|-----------------------------------------------|
//! | stored `answered`                    | acks, as the record would have told it to     |
//! | deferred, failed, could not store `answered` | reads the record, as before          |
//! | is another replica                   | reads the record, as before                   |
//!
//! So nothing is decided differently: the shortcut is taken only on a fact the bucket
//! holds already (`answered` is final for the worker).
//!
//! [`DECISION_WAIT`]: crate::decisions::DECISION_WAIT

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long an `answered` word is kept for a worker that has not read the reply yet.
/// After that the worker reads the record, which says the same.
const KEEP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Claimed; the owner has not finished.
    Open,
    /// The `answered` record is stored.
    Answered,
    /// Anything else: the worker must read the record.
    Other,
}

#[derive(Default)]
struct Inner {
    open: HashMap<String, watch::Receiver<State>>,
    /// Answered ids in the order they were, to forget them after [`KEEP`].
    answered: VecDeque<(Instant, String)>,
}

/// Shared by the endpoint (owner) and the late-reply worker of one replica.
#[derive(Clone, Default)]
pub(crate) struct Owned(Arc<Mutex<Inner>>);

/// An interaction this replica owns; dropped without [`Owner::answered`], it tells the
/// worker to read the record.
pub(crate) struct Owner {
    id: String,
    state: watch::Sender<State>,
    owned: Owned,
}

impl Owned {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `id`, claimed by this replica.
    pub fn own(&self, id: &str) -> Owner {
        let (state, watching) = watch::channel(State::Open);
        self.lock().open.insert(id.to_owned(), watching);
        Owner {
            id: id.to_owned(),
            state,
            owned: self.clone(),
        }
    }

    /// Whether this replica's owner of `id` stored `answered`, waiting for it to finish
    /// (at most `wait`) if it has not. `false`: not known here, read the record.
    pub async fn answered(&self, id: &str, wait: Duration) -> bool {
        let Some(mut state) = self.lock().open.get(id).cloned() else {
            return false;
        };
        let settled = tokio::time::timeout(wait, state.wait_for(|s| *s != State::Open)).await;
        let answered = matches!(settled, Ok(Ok(s)) if *s == State::Answered);
        if answered {
            // Read once: the worker acks the reply, and nothing else asks again.
            self.lock().open.remove(id);
        }
        answered
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().open.len()
    }
}

impl Owner {
    /// The `answered` record is stored (JetStream acknowledged it).
    pub fn answered(self) {
        let now = Instant::now();
        let mut inner = self.owned.lock();
        // Forget the words no worker of this replica came for (another replica read the
        // reply, or the handler never answered on the stream).
        while let Some((at, _)) = inner.answered.front() {
            if now.duration_since(*at) < KEEP {
                break;
            }
            let (_, old) = inner.answered.pop_front().expect("front exists");
            let stale = inner
                .open
                .get(&old)
                .is_some_and(|s| *s.borrow() == State::Answered);
            if stale {
                inner.open.remove(&old);
            }
        }
        inner.answered.push_back((now, self.id.clone()));
        self.state.send_replace(State::Answered);
        drop(inner);
        // Drop now sees Answered and leaves the entry for the worker.
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if *self.state.borrow() == State::Answered {
            return;
        }
        self.state.send_replace(State::Other);
        let mut inner = self.owned.lock();
        // Only our own entry (the claim makes one owner per id, but an entry that is not
        // ours must not be dropped by us all the same).
        if inner
            .open
            .get(&self.id)
            .is_some_and(|s| *s.borrow() == State::Other)
        {
            inner.open.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_worker_learns_answered_and_nothing_else() {
        let owned = Owned::default();
        assert!(!owned.answered("1", WAIT).await, "not owned here");

        // Answered before the worker asks.
        owned.own("1").answered();
        assert!(owned.answered("1", WAIT).await);
        assert!(!owned.answered("1", WAIT).await, "told once");

        // The worker asks first and waits for the owner.
        let owner = owned.own("2");
        let asking = tokio::spawn({
            let owned = owned.clone();
            async move { owned.answered("2", WAIT).await }
        });
        tokio::task::yield_now().await;
        owner.answered();
        assert!(asking.await.unwrap());

        // Deferred, or the record not stored: the worker reads the bucket.
        let owner = owned.own("3");
        let asking = tokio::spawn({
            let owned = owned.clone();
            async move { owned.answered("3", WAIT).await }
        });
        tokio::task::yield_now().await;
        drop(owner);
        assert!(!asking.await.unwrap());
        assert!(!owned.answered("3", WAIT).await);
        assert_eq!(owned.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded_and_old_words_are_forgotten() {
        let owned = Owned::default();
        let _open = owned.own("1");
        assert!(!owned.answered("1", Duration::from_millis(10)).await);

        owned.own("2").answered();
        assert_eq!(owned.len(), 2);
        // Forgetting is by std's clock (not tokio's, paused here): age the entry by hand.
        let old = Instant::now() - KEEP;
        owned.lock().answered.front_mut().unwrap().0 = old;
        owned.own("3").answered();
        assert_eq!(owned.len(), 2, "2 forgotten, 1 still open, 3 kept");
        assert!(!owned.answered("2", WAIT).await);
        assert!(owned.answered("3", WAIT).await);
    }
}
