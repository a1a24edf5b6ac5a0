//! Topics delivered by the broker itself: a client's reply topic
//! (`{prefix}/users/{user}/replies/{client}`), a user's inbox
//! (`{prefix}/users/{user}/inbox`) and, for sessions that end with their
//! connection, a room's events and receipts (`{prefix}/rooms/{room}/events`,
//! `{prefix}/rooms/{room}/receipts`).
//!
//! rumqttd 0.20 matches a topic published for the first time against every
//! filter it holds, and a new filter against every topic it has cached, on
//! its one router thread. With a reply filter and an inbox filter per user,
//! each connect and each first reply cost O(clients): 10,000 clients
//! reconnecting at once took over a minute (bench/results/profile.md). So
//! users' own subscriptions to these topics never reach the router: the
//! connection layer registers them here, the broker's internal link holds
//! the two wildcard filters that match every such topic, and hands each
//! publish to the registered sessions ([`Direct::deliver`]), which send it
//! at QoS 1 with packet ids of their own. The router then holds O(rooms)
//! filters, not O(clients).
//!
//! Rooms' streams are delivered from here too, handed over as a service
//! (the bridge) publishes them ([`deliver_room_stream`]); the router gets
//! them only where one of its filters matches them (a persistent session's
//! room, a service's wildcard: [`Direct::note_router_filter`]), as a topic
//! no filter matches costs its one thread a match against every filter on
//! each publish. rumqttd 0.20 preallocates ~18 KiB of
//! queues per router link whatever it carries (`examples/link_memory.rs`),
//! so a chat client whose subscriptions are all delivered here and whose
//! publishes go through the broker's shared publisher (`crate::publisher`)
//! needs no router link at all, and a connect or a reconnect storm never
//! reaches the router's thread.
//! Persistent sessions keep their room subscriptions in the router, which
//! keeps what they miss while away as a cursor into its log.
//!
//! Registrations belong to the client id, as subscriptions do in the
//! router: a takeover by a new connection with the same id moves them to
//! it, and a persistent session keeps them while it is away, with what is
//! published to them meanwhile (at most [`KEPT_MAX`]), handed over when it
//! comes back ([`Direct::attach`] / [`Direct::detach`]).

use parking_lot::Mutex;
use rumqttd::protocol::{Publish, PublishProperties, QoS};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A publish for the sessions subscribed to its topic: one allocation per
/// publish shared by all of them (a session's queue then holds a pointer
/// per slot, not a whole publish with its properties).
pub(crate) type Delivery = Arc<(Publish, Option<PublishProperties>)>;

/// Deliveries a session may have queued, and their payload bytes, before
/// new ones are dropped (and counted). A client's own burst of requests
/// (300 `rooms.create` at once in a test) fits; a client that asks for
/// history pages and never reads cannot make the broker hold more than
/// [`SESSION_QUEUE_BYTES`] for it (rumqttd bounded a reply filter's log
/// the same way).
pub(crate) const SESSION_QUEUE: usize = 8192;
pub(crate) const SESSION_QUEUE_BYTES: usize = 8 << 20;

/// A session's queue: its sender and the payload bytes queued in it (the
/// session subtracts what it takes out).
#[derive(Clone)]
pub(crate) struct Queue {
    pub(crate) tx: mpsc::Sender<Delivery>,
    pub(crate) bytes: Arc<AtomicUsize>,
}

impl Queue {
    pub(crate) fn new() -> (Self, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        (
            Queue {
                tx,
                bytes: Arc::new(AtomicUsize::new(0)),
            },
            rx,
        )
    }

    /// Queues `d` unless the queue is full in count or bytes.
    fn offer(&self, d: Delivery) -> Result<(), bool> {
        let n = d.0.payload.len();
        if self.bytes.load(Ordering::Relaxed) + n > SESSION_QUEUE_BYTES {
            return Err(true);
        }
        self.bytes.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(d) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.bytes.fetch_sub(n, Ordering::Relaxed);
                Err(matches!(e, mpsc::error::TrySendError::Full(_)))
            }
        }
    }
}

/// Messages kept for a persistent session while it is away; beyond, the
/// oldest are dropped (and counted).
pub(crate) const KEPT_MAX: usize = 1000;

/// One client id's direct subscriptions.
#[derive(Default)]
struct Client {
    /// topic and granted QoS
    topics: Vec<(String, QoS)>,
    /// the connected session (its id and queue); `None`: a persistent
    /// session away, whose deliveries wait in `kept`
    live: Option<(u64, Queue)>,
    kept: VecDeque<Delivery>,
}

#[derive(Default)]
struct State {
    /// topic -> client ids subscribed
    subs: HashMap<String, Vec<String>>,
    clients: HashMap<String, Client>,
    /// Room streams a router filter may match (see [`deliver_room_stream`]).
    router: RouterStreams,
}

/// The room streams some router filter was ever made to match: exact
/// topics, or any of them (a filter with a wildcard). Never shrinks, as
/// rumqttd 0.20 keeps every filter it was given.
#[derive(Default)]
struct RouterStreams {
    any: bool,
    topics: HashSet<String>,
}

impl RouterStreams {
    fn wants(&self, topic: &str) -> bool {
        self.any || self.topics.contains(topic)
    }
}

/// The registry of direct subscriptions, by client id (so that a takeover
/// and a persistent session behave as they do in the router).
pub(crate) struct Direct {
    /// `{prefix}/users/`
    root: String,
    /// `{prefix}/rooms/`
    rooms: String,
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl Direct {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            root: format!("{prefix}/users/"),
            rooms: format!("{prefix}/rooms/"),
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
        }
    }

    /// The two filters of the broker's internal link that match every
    /// direct topic.
    pub(crate) fn link_filters(&self) -> [String; 2] {
        [
            format!("{}+/replies/+", self.root),
            format!("{}+/inbox", self.root),
        ]
    }

    /// Whether `filter` is exactly one room's events or receipts, no
    /// wildcard: delivered here for a session that ends with its connection.
    pub(crate) fn is_room_stream(&self, filter: &str) -> bool {
        let Some(rest) = filter.strip_prefix(&self.rooms) else {
            return false;
        };
        if rest.contains(['+', '#']) {
            return false;
        }
        matches!(rest.split_once('/'), Some((room, "events" | "receipts")) if !room.is_empty())
    }

    /// Whether `filter` matches at least one room's events or receipts
    /// (a shared subscription's `$share/{group}/` left out).
    fn may_match_stream(&self, filter: &str) -> bool {
        let filter = match filter.strip_prefix("$share/") {
            Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
            None => filter,
        };
        // the stream topics' levels: the prefix's, `rooms`, a room, a kind
        let base: Vec<&str> = self.rooms.trim_end_matches('/').split('/').collect();
        let levels: Vec<&str> = filter.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if *level == "#" {
                return true;
            }
            let fits = match i {
                i if i < base.len() => *level == "+" || *level == base[i],
                i if i == base.len() => *level == "+" || !level.is_empty(),
                i if i == base.len() + 1 => matches!(*level, "+" | "events" | "receipts"),
                _ => false,
            };
            if !fits {
                return false;
            }
        }
        levels.len() == base.len() + 2
    }

    /// A router filter is made (a session's subscription that is not
    /// delivered here, or a service link's): the room streams it matches
    /// go to the router from now on (see [`deliver_room_stream`]).
    pub(crate) fn note_router_filter(&self, filter: &str) {
        if !self.may_match_stream(filter) {
            return;
        }
        let mut st = self.state.lock();
        if filter.contains(['+', '#']) || filter.starts_with("$share/") {
            st.router.any = true;
        } else {
            st.router.topics.insert(filter.to_owned());
        }
    }

    /// Whether a router filter may match the room stream `topic`: only
    /// then does the router get a service's publish of it
    /// ([`deliver_room_stream`] asks with the registry locked once).
    #[cfg(test)]
    fn router_wants(&self, topic: &str) -> bool {
        self.state.lock().router.wants(topic)
    }

    /// Whether `filter` is a direct topic: exactly one reply topic or one
    /// inbox, no wildcard.
    pub(crate) fn is_direct(&self, filter: &str) -> bool {
        let Some(rest) = filter.strip_prefix(&self.root) else {
            return false;
        };
        if rest.contains(['+', '#']) {
            return false;
        }
        let levels: Vec<&str> = rest.split('/').collect();
        matches!(levels.as_slice(), [u, "replies", c] if !u.is_empty() && !c.is_empty())
            || matches!(levels.as_slice(), [u, "inbox"] if !u.is_empty())
    }

    /// A new session of `client_id` takes over its direct subscriptions:
    /// `clean` drops what an earlier session left; otherwise the topics it
    /// kept are returned with what was published to them meanwhile.
    pub(crate) fn attach(
        &self,
        client_id: &str,
        queue: &Queue,
        clean: bool,
    ) -> (u64, Vec<(String, QoS)>, Vec<Delivery>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock();
        if clean {
            drop_client(&mut st, client_id);
        }
        let c = st.clients.entry(client_id.to_owned()).or_default();
        c.live = Some((id, queue.clone()));
        let kept = std::mem::take(&mut c.kept).into();
        (id, c.topics.clone(), kept)
    }

    /// Session `id` of `client_id` subscribes to `topic`.
    pub(crate) fn add(&self, client_id: &str, id: u64, topic: &str, qos: QoS) {
        let mut st = self.state.lock();
        let Some(c) = st.clients.get_mut(client_id) else {
            return;
        };
        if c.live.as_ref().map(|(i, _)| *i) != Some(id) {
            return; // taken over meanwhile
        }
        c.topics.retain(|(t, _)| t != topic);
        c.topics.push((topic.to_owned(), qos));
        let subs = st.subs.entry(topic.to_owned()).or_default();
        if !subs.iter().any(|c| c == client_id) {
            subs.push(client_id.to_owned());
        }
    }

    /// `client_id` unsubscribes from `topic`.
    pub(crate) fn remove(&self, client_id: &str, topic: &str) {
        let mut st = self.state.lock();
        if let Some(c) = st.clients.get_mut(client_id) {
            c.topics.retain(|(t, _)| t != topic);
        }
        unsub(&mut st, client_id, topic);
    }

    /// Session `id` of `client_id` ended: a persistent session's topics stay
    /// and collect deliveries; a clean one's go. A session already taken over
    /// changes nothing.
    pub(crate) fn detach(&self, client_id: &str, id: u64, persistent: bool) {
        let mut st = self.state.lock();
        let Some(c) = st.clients.get_mut(client_id) else {
            return;
        };
        if c.live.as_ref().map(|(i, _)| *i) != Some(id) {
            return;
        }
        if persistent {
            c.live = None;
        } else {
            drop_client(&mut st, client_id);
        }
    }

    /// The persistent session of `client_id` expired: what it kept goes
    /// (nothing, if a session is connected under the id).
    pub(crate) fn forget(&self, client_id: &str) {
        let mut st = self.state.lock();
        if st.clients.get(client_id).is_some_and(|c| c.live.is_none()) {
            drop_client(&mut st, client_id);
        }
    }

    /// [`Direct::deliver`], counted in `chatmq_direct_deliveries_total` and
    /// `chatmq_direct_dropped_total`.
    pub(crate) fn deliver_counted(
        &self,
        publish: &Publish,
        props: &Option<PublishProperties>,
        metrics: &crate::metrics::BrokerMetrics,
    ) {
        count(metrics, self.deliver(publish, props));
    }

    /// Hands `publish` to every client subscribed to its topic: a connected
    /// session's queue, or a persistent session's kept messages. Returns how
    /// many took it and how many were dropped (a full queue, or the oldest
    /// kept message).
    pub(crate) fn deliver(
        &self,
        publish: &Publish,
        props: &Option<PublishProperties>,
    ) -> (usize, usize) {
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return (0, 0);
        };
        deliver_in(&mut self.state.lock(), topic, publish, props)
    }
}

/// [`Direct::deliver`] with the registry locked.
fn deliver_in(
    st: &mut State,
    topic: &str,
    publish: &Publish,
    props: &Option<PublishProperties>,
) -> (usize, usize) {
    let State { subs, clients, .. } = st;
    let Some(list) = subs.get(topic) else {
        return (0, 0);
    };
    let (mut sent, mut dropped) = (0, 0);
    let shared: Delivery = Arc::new((publish.clone(), props.clone()));
    for client_id in list {
        let Some(c) = clients.get_mut(client_id) else {
            continue;
        };
        let d = shared.clone();
        match &c.live {
            Some((_, q)) => match q.offer(d) {
                Ok(()) => sent += 1,
                Err(true) => dropped += 1,
                Err(false) => {}
            },
            None => {
                if c.kept.len() >= KEPT_MAX {
                    c.kept.pop_front();
                    dropped += 1;
                }
                c.kept.push_back(d);
                sent += 1;
            }
        }
    }
    (sent, dropped)
}

/// A service (the bridge) publishes `publish`: if it is a room's stream,
/// the sessions that subscribed to it here get it now, in the publisher's
/// order. Returns whether the router needs it too: anything but a room's
/// stream, and a room stream some router filter matches (a persistent
/// session's, a service's wildcard). A topic no router filter matches
/// would cost the router's thread a match against every filter it holds
/// (rumqttd 0.20 caches only topics that match), and the publisher's link
/// an acknowledgement, for nobody.
pub(crate) fn deliver_room_stream(
    direct: &Direct,
    metrics: &crate::metrics::BrokerMetrics,
    publish: &Publish,
    props: &Option<PublishProperties>,
) -> bool {
    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
        return true;
    };
    if !direct.is_room_stream(topic) {
        return true;
    }
    let (delivered, wanted) = {
        let mut st = direct.state.lock();
        let delivered = deliver_in(&mut st, topic, publish, props);
        (delivered, st.router.wants(topic))
    };
    count(metrics, delivered);
    wanted
}

/// Counts a delivery's `(sent, dropped)` in `chatmq_direct_deliveries_total`
/// and `chatmq_direct_dropped_total`.
fn count(metrics: &crate::metrics::BrokerMetrics, (sent, dropped): (usize, usize)) {
    metrics.direct_deliveries.inc_by(sent as u64);
    if dropped > 0 {
        metrics.direct_dropped.inc_by(dropped as u64);
    }
}

/// Forgets `client_id` and its subscriptions.
fn drop_client(st: &mut State, client_id: &str) {
    if let Some(c) = st.clients.remove(client_id) {
        for (t, _) in c.topics {
            unsub(st, client_id, &t);
        }
    }
}

fn unsub(st: &mut State, client_id: &str, topic: &str) {
    if let Some(list) = st.subs.get_mut(topic) {
        list.retain(|c| c != client_id);
        if list.is_empty() {
            st.subs.remove(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publish(topic: &str) -> Publish {
        Publish::new(
            Bytes::from(topic.to_owned()),
            Bytes::from_static(b"x"),
            false,
        )
    }

    #[test]
    fn only_exact_reply_and_inbox_topics_are_direct() {
        let d = Direct::new("chat");
        for (f, want) in [
            ("chat/users/alice/replies/phone", true),
            ("chat/users/alice/inbox", true),
            ("chat/users/+/inbox", false),
            ("chat/users/alice/replies/+", false),
            ("chat/users/#", false),
            ("chat/users/alice/replies/phone/x", false),
            ("chat/users//inbox", false),
            ("chat/rooms/r1/events", false),
            ("other/users/alice/inbox", false),
        ] {
            assert_eq!(d.is_direct(f), want, "{f}");
        }
        assert_eq!(
            d.link_filters(),
            [
                "chat/users/+/replies/+".to_owned(),
                "chat/users/+/inbox".to_owned()
            ]
        );
    }

    #[test]
    fn only_one_rooms_events_or_receipts_are_room_streams() {
        let d = Direct::new("chat");
        for (f, want) in [
            ("chat/rooms/r1/events", true),
            ("chat/rooms/r1/receipts", true),
            ("chat/rooms/+/events", false),
            ("chat/rooms/r1/typing/+", false),
            ("chat/rooms/r1/typing/bob", false),
            ("chat/rooms/r1/send/bob", false),
            ("chat/rooms//events", false),
            ("chat/rooms/r1/events/x", false),
            ("chat/rooms/#", false),
            ("other/rooms/r1/events", false),
            ("chat/users/alice/inbox", false),
        ] {
            assert_eq!(d.is_room_stream(f), want, "{f}");
        }
    }

    #[test]
    fn room_streams_go_to_the_router_only_where_a_router_filter_matches() {
        let t1 = "a/chat/rooms/r1/events";
        let t2 = "a/chat/rooms/r2/receipts";
        // (router filter made, whether t1 and t2 then go to the router)
        for (f, want) in [
            ("a/chat/rooms/r1/events", [true, false]),
            ("a/chat/rooms/r2/receipts", [false, true]),
            ("a/chat/rooms/+/events", [true, true]),
            ("a/chat/rooms/r2/+", [true, true]),
            ("a/chat/rooms/#", [true, true]),
            ("a/+/rooms/+/+", [true, true]),
            ("#", [true, true]),
            ("+/#", [true, true]),
            ("$share/g/a/chat/rooms/+/events", [true, true]),
            // a wildcard that matches one stream sends them all (a superset)
            ("a/chat/+/r1/events", [true, true]),
            ("a/chat/+/r1/x", [false, false]),
            ("a/chat/rooms/r1/typing/+", [false, false]),
            ("a/chat/rooms/+/send/+", [false, false]),
            ("a/chat/rooms/r1/events/x", [false, false]),
            ("a/chat/rooms/+", [false, false]),
            ("a/chat/users/+/inbox", [false, false]),
            ("b/chat/rooms/+/events", [false, false]),
        ] {
            let d = Direct::new("a/chat");
            assert!(!d.router_wants(t1) && !d.router_wants(t2), "none at first");
            d.note_router_filter(f);
            assert_eq!([d.router_wants(t1), d.router_wants(t2)], want, "{f}");
        }
    }

    #[test]
    fn deliveries_reach_subscribed_sessions_only() {
        let d = Direct::new("chat");
        let (tx1, mut rx1) = Queue::new();
        let (tx2, mut rx2) = Queue::new();
        let (a, _, _) = d.attach("phone", &tx1, true);
        let (b, _, _) = d.attach("laptop", &tx2, true);
        d.add("phone", a, "chat/users/alice/inbox", QoS::AtLeastOnce);
        d.add("phone", a, "chat/users/alice/inbox", QoS::AtLeastOnce);
        d.add("laptop", b, "chat/users/alice/inbox", QoS::AtLeastOnce);
        d.add("laptop", b, "chat/users/bob/inbox", QoS::AtLeastOnce);
        let p = publish("chat/users/alice/inbox");
        assert_eq!(d.deliver(&p, &None), (2, 0), "each session once");
        assert!(rx1.try_recv().is_ok() && rx1.try_recv().is_err());
        assert!(rx2.try_recv().is_ok());
        d.remove("laptop", "chat/users/alice/inbox");
        assert_eq!(d.deliver(&p, &None), (1, 0));
        assert!(rx1.try_recv().is_ok() && rx2.try_recv().is_err());
        assert_eq!(d.deliver(&publish("chat/users/carol/inbox"), &None), (0, 0));
    }

    #[test]
    fn a_queue_is_bounded_in_count_and_bytes() {
        let d = Direct::new("chat");
        let (q, mut rx) = Queue::new();
        let (a, _, _) = d.attach("phone", &q, true);
        d.add("phone", a, "chat/users/alice/inbox", QoS::AtLeastOnce);
        let small = publish("chat/users/alice/inbox");
        for _ in 0..SESSION_QUEUE {
            assert_eq!(d.deliver(&small, &None), (1, 0));
        }
        assert_eq!(d.deliver(&small, &None), (0, 1), "full in count");
        while rx.try_recv().is_ok() {}
        q.bytes.store(0, Ordering::Relaxed); // the session subtracts as it takes
        let big = Publish::new(
            Bytes::from_static(b"chat/users/alice/inbox"),
            Bytes::from(vec![0u8; 3 << 20]),
            false,
        );
        assert_eq!(d.deliver(&big, &None), (1, 0));
        assert_eq!(d.deliver(&big, &None), (1, 0));
        assert_eq!(d.deliver(&big, &None), (0, 1), "full in bytes (8 MiB)");
        assert_eq!(q.bytes.load(Ordering::Relaxed), 6 << 20);
    }

    #[test]
    fn persistent_sessions_keep_topics_and_messages() {
        let d = Direct::new("chat");
        let (tx, _rx) = Queue::new();
        let (a, topics, kept) = d.attach("phone", &tx, false);
        assert!(topics.is_empty() && kept.is_empty());
        d.add("phone", a, "chat/users/alice/inbox", QoS::AtLeastOnce);
        d.detach("phone", a, true);
        let p = publish("chat/users/alice/inbox");
        assert_eq!(d.deliver(&p, &None), (1, 0), "kept while away");
        let (b, topics, kept) = d.attach("phone", &tx, false);
        assert_eq!(topics.len(), 1);
        assert_eq!(kept.len(), 1, "handed over on return");
        // a takeover: the old session's end changes nothing
        let (c, topics, _) = d.attach("phone", &tx, false);
        assert_eq!(topics.len(), 1);
        d.detach("phone", b, false);
        assert_eq!(
            d.deliver(&p, &None),
            (1, 0),
            "still subscribed after the old session ended"
        );
        // a clean start forgets everything
        d.detach("phone", c, true);
        let (_, topics, kept) = d.attach("phone", &tx, true);
        assert!(topics.is_empty() && kept.is_empty());
        assert_eq!(d.deliver(&p, &None), (0, 0));
    }

    #[test]
    fn kept_messages_are_bounded() {
        let d = Direct::new("chat");
        let (tx, _rx) = Queue::new();
        let (a, _, _) = d.attach("phone", &tx, false);
        d.add("phone", a, "chat/users/alice/inbox", QoS::AtLeastOnce);
        d.detach("phone", a, true);
        let p = publish("chat/users/alice/inbox");
        for _ in 0..KEPT_MAX {
            d.deliver(&p, &None);
        }
        assert_eq!(d.deliver(&p, &None), (1, 1), "the oldest goes");
        let (_, _, kept) = d.attach("phone", &tx, false);
        assert_eq!(kept.len(), KEPT_MAX);
    }
}
