//! Group commit: tasks hand their items to one committer task, which writes whatever has
//! queued up while its last commit ran in one transaction, so under load one commit serves
//! many items. A batch that fails is written again one item at a time, so one bad item
//! cannot sink the others, unless the failure says that no write can succeed now (the
//! database is down): then the whole batch is given up at once, and the items' leases
//! bring them back. Each task learns what became of its own item.

use std::{future::Future, sync::Arc};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// Writes batches for a [`GroupCommit`].
pub trait CommitBatch: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Reply: Send + Sync + 'static;
    type Error: std::fmt::Display + Send;
    /// What an item is, for logs ("job outcome").
    const ITEM: &'static str;

    /// Writes the batch in one transaction; one reply per item, in order.
    fn commit(
        &self,
        batch: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Reply>, Self::Error>> + Send;

    /// Whether a failed batch is worth writing again one item at a time: not when the error
    /// says that no write can succeed now.
    fn worth_retrying_singly(_error: &Self::Error) -> bool {
        true
    }

    /// Runs after each batch, with what each item got (None: it was not written).
    fn committed(&self, _replies: &[Option<Self::Reply>]) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Why a submitted item was not written. Either way its lease will expire and the item be
/// worked on again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unrecorded {
    #[error("the committer stopped")]
    Stopped,
    /// Writing failed; the committer logged why.
    #[error("writing it failed")]
    Failed,
}

/// The handle tasks submit items through; the committer ends when every handle is gone.
pub struct GroupCommit<Item, Reply> {
    items: mpsc::Sender<(Item, oneshot::Sender<Reply>)>,
}

impl<Item, Reply> Clone for GroupCommit<Item, Reply> {
    fn clone(&self) -> Self {
        Self {
            items: self.items.clone(),
        }
    }
}

impl<Item: Send + Sync + 'static, Reply: Send + Sync + 'static> GroupCommit<Item, Reply> {
    /// Starts the committer: at most `batch` items per commit, and up to `capacity` waiting
    /// before submitters wait too.
    pub fn start<C>(committer: Arc<C>, batch: usize, capacity: usize) -> (Self, JoinHandle<()>)
    where
        C: CommitBatch<Item = Item, Reply = Reply>,
    {
        let (items, received) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(commit_batches(committer, received, batch.max(1)));
        (Self { items }, task)
    }

    /// Hands an item to the committer and waits until it is written.
    pub async fn submit(&self, item: Item) -> Result<Reply, Unrecorded> {
        let (reply, replied) = oneshot::channel();
        self.items
            .send((item, reply))
            .await
            .map_err(|_| Unrecorded::Stopped)?;
        replied.await.map_err(|_| Unrecorded::Failed)
    }
}

async fn commit_batches<C: CommitBatch>(
    committer: Arc<C>,
    mut received: mpsc::Receiver<(C::Item, oneshot::Sender<C::Reply>)>,
    batch_size: usize,
) {
    let mut batch = Vec::with_capacity(batch_size);
    while received.recv_many(&mut batch, batch_size).await > 0 {
        let (items, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        let results: Vec<Option<C::Reply>> = match committer.commit(&items).await {
            Ok(results) => results.into_iter().map(Some).collect(),
            Err(err) if items.len() > 1 && C::worth_retrying_singly(&err) => {
                tracing::warn!(error = %err, items = items.len(), "writing {}s together failed; writing them one by one", C::ITEM);
                let mut results = Vec::with_capacity(items.len());
                for item in &items {
                    results.push(match committer.commit(std::slice::from_ref(item)).await {
                        Ok(mut one) => one.pop(),
                        Err(err) => {
                            tracing::warn!(error = %err, "writing a {} failed", C::ITEM);
                            None
                        }
                    });
                }
                results
            }
            Err(err) => {
                tracing::warn!(error = %err, items = items.len(), "writing {}s failed", C::ITEM);
                items.iter().map(|_| None).collect()
            }
        };
        committer.committed(&results).await;
        // A reply dropped (None) tells its submitter that the item was not written.
        for (reply, result) in replies.into_iter().zip(results) {
            if let Some(result) = result {
                let _ = reply.send(result);
            }
        }
    }
}
