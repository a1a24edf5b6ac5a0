//! Target `authorizer`: `broker::acl::Authorizer` against an independent
//! reference of PROTOCOL.md's topic table.
//!
//! Each input is a small world (prefix, `open_topics`, rooms with their
//! members and open flag), the subscribing user and client id, filters and
//! publish topics built from a small alphabet of levels (`+`, `#`, the
//! prefix, PROTOCOL.md's words, room, user and client names, empty and `$`
//! levels, anything), and membership changes made after subscribing.
//!
//! Properties:
//! 1. For every filter `check_subscribe` accepts, every topic the filter
//!    matches (generated: each wildcard replaced by each alphabet level, plus
//!    random fillings) is one the user may read per [`may_read`].
//! 2. After the world changes (joins, leaves, channels opened or closed),
//!    every such topic that `may_deliver` lets through is still readable.
//! 3. A publish `check_publish` accepts under the prefix names the publisher
//!    as its user level (`rooms/{room}/send/{me}`, `rooms/{room}/typing/{me}`
//!    as a member, `rpc/{me}/{method}`); outside the prefix only with
//!    `open_topics`, never a `$` topic, never a wildcard.

use arbitrary::{Arbitrary, Unstructured};
use broker::acl::{Access, Authorizer};
use broker::auth::Principal;
use std::collections::HashSet;
use std::sync::Arc;

/// Prefixes a deployment may configure: one level, as the config requires.
/// (A two-level prefix such as `org/chat` was this target's first finding:
/// the authorizer took `org/#` for a topic outside the prefix. See
/// docs/fuzzing.md.)
pub const PREFIXES: [&str; 3] = ["chat", "talk", "c-1"];
const USERS: [&str; 4] = ["alice", "bob", "carol", "a.b"];
const ROOMS: [&str; 4] = ["r1", "r2", "news", "dm.a.b"];
const CLIENTS: [&str; 3] = ["p1", "phone:2", "alice"];
const WORDS: [&str; 16] = [
    "rooms", "events", "typing", "receipts", "send", "users", "replies", "inbox", "presence",
    "rpc", "hooks", "access", "history", "chat", "org", "devices",
];

/// One level of a filter or publish topic.
#[derive(Debug, Clone, Arbitrary)]
pub enum Level {
    Plus,
    Hash,
    /// the configured prefix (one or more levels)
    Prefix,
    Word(u8),
    Room(u8),
    User(u8),
    Client(u8),
    Empty,
    Dollar,
    Raw(String),
}

/// A membership change after subscribing.
#[derive(Debug, Clone, Arbitrary)]
pub enum Change {
    Member { room: u8, user: u8, joined: bool },
    Open { room: u8, open: bool },
}

/// One input.
#[derive(Debug, Arbitrary)]
pub struct Case {
    pub prefix: u8,
    pub open_topics: bool,
    /// per room: open channel?, members as a bit mask over the users
    pub rooms: [(bool, u8); 4],
    pub me: u8,
    pub client: u8,
    pub filters: Vec<Vec<Level>>,
    pub publishes: Vec<Vec<Level>>,
    pub after: Vec<Change>,
    pub seed: u64,
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

/// The world as PROTOCOL.md sees it, kept apart from the broker's `Access`.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub prefix: Vec<String>,
    pub open_topics: bool,
    pub open: HashSet<String>,
    pub members: HashSet<(String, String)>,
}

impl World {
    fn member(&self, room: &str, user: &str) -> bool {
        self.members.contains(&(room.to_owned(), user.to_owned()))
    }
    fn share(&self, a: &str, b: &str) -> bool {
        self.members
            .iter()
            .any(|(r, u)| u == a && self.member(r, b))
    }
    /// The levels after the prefix, if `topic` lies strictly under it.
    fn under<'a>(&self, topic: &'a [&'a str]) -> Option<&'a [&'a str]> {
        let n = self.prefix.len();
        (topic.len() > n && topic.iter().zip(&self.prefix).all(|(a, b)| a == b))
            .then(|| &topic[n..])
    }
    fn is_prefix(&self, topic: &[&str]) -> bool {
        topic.len() == self.prefix.len() && topic.iter().zip(&self.prefix).all(|(a, b)| a == b)
    }
}

/// The reference: may user `me`, connected as `client`, read `topic`?
/// From PROTOCOL.md's topic table alone.
pub fn may_read(w: &World, me: &str, client: &str, topic: &[&str]) -> bool {
    if topic.first().is_some_and(|l| l.starts_with('$')) {
        return false;
    }
    if w.is_prefix(topic) {
        return false;
    }
    let Some(rest) = w.under(topic) else {
        return w.open_topics;
    };
    match rest {
        ["rooms", room, "events"] => w.open.contains(*room) || w.member(room, me),
        ["rooms", room, "typing", _] | ["rooms", room, "receipts"] => w.member(room, me),
        ["users", user, "replies", c] => *user == me && *c == client,
        ["users", user, "inbox"] => *user == me,
        ["presence", user] => *user == me || w.share(me, user),
        _ => false,
    }
}

/// MQTT topic-filter matching (MQTT 3.1.1 4.7; a filter starting with a
/// wildcard does not match a `$` topic).
pub fn matches(filter: &[&str], topic: &[&str]) -> bool {
    if topic.first().is_some_and(|l| l.starts_with('$'))
        && filter.first().is_some_and(|l| *l == "+" || *l == "#")
    {
        return false;
    }
    let mut t = topic.iter();
    for (i, f) in filter.iter().enumerate() {
        match *f {
            "#" => return i == filter.len() - 1,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(&lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

/// A valid MQTT topic filter: `#` only as the last level, wildcards only as
/// whole levels, not empty.
pub fn valid_filter(levels: &[&str]) -> bool {
    !levels.is_empty()
        && !(levels.len() == 1 && levels[0].is_empty())
        && levels.iter().enumerate().all(|(i, l)| match *l {
            "#" => i == levels.len() - 1,
            "+" => true,
            l => !l.contains(['+', '#']),
        })
}

/// Every non-wildcard level a topic may be made of.
fn alphabet(w: &World) -> Vec<String> {
    let mut a: Vec<String> = w.prefix.clone();
    a.extend(
        PREFIXES
            .iter()
            .flat_map(|p| p.split('/'))
            .map(str::to_owned),
    );
    a.extend(WORDS.iter().map(|s| s.to_string()));
    a.extend(ROOMS.iter().map(|s| s.to_string()));
    a.extend(USERS.iter().map(|s| s.to_string()));
    a.extend(CLIENTS.iter().map(|s| s.to_string()));
    a.extend(["", "$SYS", "x"].map(str::to_owned));
    a.sort();
    a.dedup();
    a
}

fn render(levels: &[Level], w: &World) -> String {
    let parts: Vec<String> = levels
        .iter()
        .take(8)
        .map(|l| match l {
            Level::Plus => "+".to_owned(),
            Level::Hash => "#".to_owned(),
            Level::Prefix => w.prefix.join("/"),
            Level::Word(i) => pick(&WORDS, *i).to_owned(),
            Level::Room(i) => pick(&ROOMS, *i).to_owned(),
            Level::User(i) => pick(&USERS, *i).to_owned(),
            Level::Client(i) => pick(&CLIENTS, *i).to_owned(),
            Level::Empty => String::new(),
            Level::Dollar => "$SYS".to_owned(),
            Level::Raw(s) => s.chars().take(16).collect(),
        })
        .collect();
    parts.join("/")
}

/// Topics `filter` matches: every wildcard filled with each alphabet level
/// in turn (`#` also with nothing), then random fillings.
fn topics_of(filter: &[&str], alpha: &[String], seed: &mut u64) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let build = |pick: &mut dyn FnMut(bool) -> Vec<String>| -> Vec<String> {
        let mut t = Vec::new();
        for f in filter {
            match *f {
                "+" => t.extend(pick(false)),
                "#" => t.extend(pick(true)),
                lit => t.push(lit.to_owned()),
            }
        }
        t
    };
    for a in alpha {
        out.push(build(&mut |_| vec![a.clone()]));
    }
    out.push(build(&mut |hash| {
        if hash {
            Vec::new()
        } else {
            vec![String::new()]
        }
    }));
    for _ in 0..24 {
        out.push(build(&mut |hash| {
            let n = if hash { next(seed) % 4 } else { 1 };
            (0..n)
                .map(|_| alpha[(next(seed) % alpha.len() as u64) as usize].clone())
                .collect()
        }));
    }
    out
}

/// xorshift64*: the random fillings, from the input's seed.
fn next(s: &mut u64) -> u64 {
    if *s == 0 {
        *s = 0x9E37_79B9_7F4A_7C15;
    }
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Applies the world to the broker's `Access` and to the reference.
fn build(case: &Case) -> (World, Arc<Access>) {
    let mut w = World {
        prefix: pick(&PREFIXES, case.prefix)
            .split('/')
            .map(str::to_owned)
            .collect(),
        open_topics: case.open_topics,
        ..World::default()
    };
    let access = Arc::new(Access::new());
    for (i, (open, mask)) in case.rooms.iter().enumerate() {
        let room = ROOMS[i];
        if *open {
            access.set_open(room, true);
            w.open.insert(room.to_owned());
        }
        for (j, user) in USERS.iter().enumerate() {
            if mask & (1 << j) != 0 {
                access.set_member(room, user, true);
                w.members.insert((room.to_owned(), user.to_string()));
            }
        }
    }
    (w, access)
}

fn change(c: &Change, w: &mut World, access: &Access) {
    match c {
        Change::Member { room, user, joined } => {
            let (room, user) = (pick(&ROOMS, *room), pick(&USERS, *user));
            access.set_member(room, user, *joined);
            let key = (room.to_owned(), user.to_owned());
            if *joined {
                w.members.insert(key);
            } else {
                w.members.remove(&key);
            }
        }
        Change::Open { room, open } => {
            let room = pick(&ROOMS, *room);
            access.set_open(room, *open);
            if *open {
                w.open.insert(room.to_owned());
            } else {
                w.open.remove(room);
            }
        }
    }
}

/// Runs one input; panics on a violated property.
pub fn run(data: &[u8]) {
    if let Ok(case) = Case::arbitrary_take_rest(Unstructured::new(data)) {
        check(&case);
    }
}

/// Checks the three properties on one case.
pub fn check(case: &Case) {
    let (mut w, access) = build(case);
    let authz = Authorizer::new(&w.prefix.join("/"), w.open_topics, access.clone());
    let me = pick(&USERS, case.me);
    let client = pick(&CLIENTS, case.client);
    let who = Principal::User(me.to_owned());
    let alpha = alphabet(&w);
    let mut seed = case.seed;
    let mut accepted: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    for f in case.filters.iter().take(8) {
        let filter = render(f, &w);
        let decision = authz.check_subscribe(&who, client, &filter);
        if !decision.allowed() {
            continue;
        }
        let fl: Vec<&str> = filter.split('/').collect();
        assert!(valid_filter(&fl), "accepted an invalid filter {filter:?}");
        let topics = topics_of(&fl, &alpha, &mut seed);
        for t in &topics {
            let tl: Vec<&str> = t.iter().map(String::as_str).collect();
            if matches(&fl, &tl) {
                assert!(
                    may_read(&w, me, client, &tl),
                    "{me} (client {client}) subscribed to {filter:?}, which matches {:?} that {me} may not read; world {w:?}",
                    tl.join("/")
                );
            }
        }
        accepted.push((filter, topics));
    }
    for c in case.after.iter().take(8) {
        change(c, &mut w, &access);
    }
    for (filter, topics) in &accepted {
        let fl: Vec<&str> = filter.split('/').collect();
        for t in topics {
            let tl: Vec<&str> = t.iter().map(String::as_str).collect();
            let topic = tl.join("/");
            if matches(&fl, &tl) && authz.may_deliver(&who, &topic) {
                assert!(
                    may_read(&w, me, client, &tl),
                    "{me} subscribed to {filter:?} and is delivered {topic:?} it may no longer read; world {w:?}",
                );
            }
        }
    }
    for p in case.publishes.iter().take(8) {
        let topic = render(p, &w);
        if !authz.check_publish(&who, &topic).allowed() {
            continue;
        }
        let tl: Vec<&str> = topic.split('/').collect();
        assert!(
            !topic.is_empty() && !topic.contains(['+', '#']),
            "accepted a publish to {topic:?}"
        );
        assert!(
            may_publish(&w, me, &tl),
            "{me} may publish to {topic:?}; world {w:?}"
        );
    }
}

/// The reference for publishes: under the prefix only the user's own send,
/// typing (as a member) and rpc topics; outside only with open topics and
/// never a `$` topic.
pub fn may_publish(w: &World, me: &str, topic: &[&str]) -> bool {
    if topic.first().is_some_and(|l| l.starts_with('$')) || w.is_prefix(topic) {
        return false;
    }
    let Some(rest) = w.under(topic) else {
        return w.open_topics;
    };
    match rest {
        ["rooms", room, "send", user] => *user == me && valid_id(room),
        ["rooms", room, "typing", user] => *user == me && w.member(room, me),
        ["rpc", user, method] => *user == me && !method.is_empty(),
        _ => false,
    }
}

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}
