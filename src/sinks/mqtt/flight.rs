//! Which messages the broker has acknowledged, and so which batches are
//! done (the driver moves the cursor over them, oldest first).

use std::collections::{HashMap, VecDeque};

use rumqttc::QoS;

/// What this connection has handed to the client and what the broker has
/// acknowledged, by packet id: a batch is done when every message of it is
/// sent and acknowledged, and the cursor moves over done batches in order.
#[derive(Default)]
pub struct InFlight {
    /// Open batches, oldest first.
    batches: VecDeque<Batch>,
    next_id: u64,
    /// The batch of each message handed to the client and not yet sent, in
    /// order (the client sends in order); `None` for state messages.
    queued: VecDeque<Option<u64>>,
    /// The batch of each sent message awaiting its acknowledgement.
    by_pkid: HashMap<u16, Option<u64>>,
}

struct Batch {
    id: u64,
    unsent: u64,
    unacked: u64,
}

impl InFlight {
    /// A new batch; its messages follow with [`InFlight::queue`].
    pub fn open(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.batches.push_back(Batch {
            id,
            unsent: 0,
            unacked: 0,
        });
        id
    }

    fn batch(&mut self, id: Option<u64>) -> Option<&mut Batch> {
        let id = id?;
        let first = self.batches.front()?.id;
        self.batches.get_mut(id.checked_sub(first)? as usize)
    }

    /// A message of `batch` was handed to the client.
    pub fn queue(&mut self, batch: Option<u64>) {
        if let Some(b) = self.batch(batch) {
            b.unsent += 1;
        }
        self.queued.push_back(batch);
    }

    /// The client sent the next queued message as `pkid`.
    pub fn sent(&mut self, pkid: u16, qos: QoS) {
        let Some(batch) = self.queued.pop_front() else {
            return;
        };
        // QoS 0 has no acknowledgement: sent is delivered.
        let acked = qos == QoS::AtMostOnce;
        if let Some(b) = self.batch(batch) {
            b.unsent -= 1;
            if !acked {
                b.unacked += 1;
            }
        }
        if !acked {
            self.by_pkid.insert(pkid, batch);
        }
    }

    /// The broker acknowledged `pkid`.
    pub fn acked(&mut self, pkid: u16) {
        if let Some(batch) = self.by_pkid.remove(&pkid)
            && let Some(b) = self.batch(batch)
        {
            b.unacked = b.unacked.saturating_sub(1);
        }
    }

    /// Removes the oldest batches with nothing left to send or acknowledge;
    /// returns how many.
    pub fn take_done(&mut self) -> usize {
        let mut n = 0;
        while let Some(b) = self.batches.front() {
            if b.unsent > 0 || b.unacked > 0 {
                break;
            }
            self.batches.pop_front();
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_done_only_when_sent_and_acknowledged_in_full() {
        let mut f = InFlight::default();
        let a = f.open();
        f.queue(Some(a));
        f.queue(None); // a state message between the batches
        let b = f.open();
        f.queue(Some(b));
        f.queue(Some(b));
        assert_eq!(f.take_done(), 0);
        f.sent(1, QoS::AtLeastOnce);
        f.sent(2, QoS::AtLeastOnce);
        f.sent(3, QoS::AtLeastOnce);
        f.sent(4, QoS::AtLeastOnce);
        // Acknowledgements out of order: b's first, then the state's.
        f.acked(3);
        f.acked(4);
        f.acked(2);
        assert_eq!(f.take_done(), 0, "a is not acknowledged yet");
        f.acked(1);
        assert_eq!(f.take_done(), 2);
        // An unknown or repeated acknowledgement changes nothing.
        let c = f.open();
        f.queue(Some(c));
        f.acked(1);
        assert_eq!(f.take_done(), 0, "c is not even sent");
        f.sent(5, QoS::AtLeastOnce);
        assert_eq!(f.take_done(), 0);
        f.acked(5);
        assert_eq!(f.take_done(), 1);
    }

    #[test]
    fn at_qos_0_sent_is_delivered() {
        let mut f = InFlight::default();
        let a = f.open();
        f.queue(Some(a));
        f.queue(Some(a));
        f.sent(0, QoS::AtMostOnce);
        assert_eq!(f.take_done(), 0);
        f.sent(0, QoS::AtMostOnce);
        assert_eq!(f.take_done(), 1);
        // A batch whose events go to no topic is done at once.
        f.open();
        assert_eq!(f.take_done(), 1);
    }
}
