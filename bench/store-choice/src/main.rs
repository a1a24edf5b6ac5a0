//! Measures the two candidate embedded engines for the chat store on the
//! store's own access pattern:
//!
//! 1. 200,000 events (~200 bytes) over 100 rooms, group commits of 64 with a
//!    durable commit (fdatasync) per batch;
//! 2. 2,000 events, one durable commit per event;
//! 3. 10,000 reads of the latest-50 page of a random room, each in a fresh
//!    snapshot / read transaction (as the store does).
//!
//! Each appended event also writes an idempotency key and looks it up first,
//! as the real store's writer does.
//!
//! Usage: `cargo run --release [-- fjall|redb]` (both by default).

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

const ROOMS: usize = 100;
const GROUP_EVENTS: usize = 200_000;
const GROUP: usize = 64;
const SINGLE_EVENTS: usize = 2_000;
const READS: usize = 10_000;
const PAGE: usize = 50;

/// Tiny deterministic PRNG (xorshift64*), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn room_name(i: usize) -> String {
    format!("room-{i:04}")
}

fn event_key(room: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.len() + 9);
    k.extend_from_slice(room.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn idem_key(room: &str, from: &str, msg_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.len() + from.len() + msg_id.len() + 2);
    k.extend_from_slice(room.as_bytes());
    k.push(0);
    k.extend_from_slice(from.as_bytes());
    k.push(0);
    k.extend_from_slice(msg_id.as_bytes());
    k
}

/// One event to append: (event key, json, idempotency key).
struct Ev {
    key: Vec<u8>,
    idem: Vec<u8>,
    json: Vec<u8>,
}

/// Generates `n` events round-robin-ish over the rooms, continuing the heads.
fn gen_events(n: usize, heads: &mut [u64], rng: &mut Rng, tag: &str) -> Vec<Ev> {
    (0..n)
        .map(|i| {
            let r = (rng.next() % ROOMS as u64) as usize;
            heads[r] += 1;
            let room = room_name(r);
            let seq = heads[r];
            let from = format!("user-{}", rng.next() % 1000);
            let msg_id = format!("{tag}-{i:08}");
            let mut json = format!(
                r#"{{"room":"{room}","seq":{seq},"ts":1760000000000,"from":"{from}","msg_id":"{msg_id}","type":"message","body":""#
            );
            while json.len() < 198 {
                json.push('x');
            }
            json.push_str(r#""}"#);
            Ev {
                key: event_key(&room, seq),
                idem: idem_key(&room, &from, &msg_id),
                json: json.into_bytes(),
            }
        })
        .collect()
}

trait Engine {
    fn name(&self) -> &'static str;
    /// Writes the events in one durable commit.
    fn commit(&mut self, batch: &[Ev]) -> Res<()>;
    /// Reads the newest `PAGE` events of a room in a fresh snapshot; returns the count.
    fn latest(&self, room: &str) -> Res<usize>;
}

// ---------------------------------------------------------------- fjall

struct Fjall {
    db: fjall::Database,
    events: fjall::Keyspace,
    idem: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Res<Self> {
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .open()?;
        let events = db.keyspace("events", fjall::KeyspaceCreateOptions::default)?;
        let idem = db.keyspace("idem", fjall::KeyspaceCreateOptions::default)?;
        Ok(Self { db, events, idem })
    }
}

impl Engine for Fjall {
    fn name(&self) -> &'static str {
        "fjall 3"
    }
    fn commit(&mut self, batch: &[Ev]) -> Res<()> {
        use fjall::Readable;
        let snap = self.db.snapshot();
        let mut wb = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for e in batch {
            if snap.get(&self.idem, &e.idem)?.is_some() {
                return Err("unexpected duplicate".into());
            }
            wb.insert(&self.events, e.key.as_slice(), e.json.as_slice());
            wb.insert(&self.idem, e.idem.as_slice(), &e.key[e.key.len() - 8..]);
        }
        wb.commit()?;
        Ok(())
    }
    fn latest(&self, room: &str) -> Res<usize> {
        use fjall::Readable;
        let snap = self.db.snapshot();
        let lo = event_key(room, 0);
        let hi = event_key(room, u64::MAX);
        let mut n = 0;
        for g in snap.range(&self.events, lo..=hi).rev().take(PAGE) {
            let (_k, v) = g.into_inner()?;
            n += usize::from(!v.is_empty());
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------- redb

const R_EVENTS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");
const R_IDEM: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("idem");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Res<Self> {
        let db = redb::Database::create(dir.join("store.redb"))?;
        Ok(Self { db })
    }
}

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb 4"
    }
    fn commit(&mut self, batch: &[Ev]) -> Res<()> {
        use redb::ReadableTable;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut events = tx.open_table(R_EVENTS)?;
            let mut idem = tx.open_table(R_IDEM)?;
            for e in batch {
                if idem.get(e.idem.as_slice())?.is_some() {
                    return Err("unexpected duplicate".into());
                }
                events.insert(e.key.as_slice(), e.json.as_slice())?;
                idem.insert(e.idem.as_slice(), &e.key[e.key.len() - 8..])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn latest(&self, room: &str) -> Res<usize> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let events = tx.open_table(R_EVENTS)?;
        let lo = event_key(room, 0);
        let hi = event_key(room, u64::MAX);
        let mut n = 0;
        for item in events
            .range(lo.as_slice()..=hi.as_slice())?
            .rev()
            .take(PAGE)
        {
            let (_k, v) = item?;
            n += usize::from(!v.value().is_empty());
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------- driver

struct Row {
    name: &'static str,
    group_eps: f64,
    single_eps: f64,
    p50: Duration,
    p99: Duration,
    disk: u64,
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn run(engine: &mut dyn Engine, dir: &Path) -> Res<Row> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut heads = vec![0u64; ROOMS];

    let evs = gen_events(GROUP_EVENTS, &mut heads, &mut rng, "g");
    let t = Instant::now();
    for chunk in evs.chunks(GROUP) {
        engine.commit(chunk)?;
    }
    let group_eps = GROUP_EVENTS as f64 / t.elapsed().as_secs_f64();
    drop(evs);

    let evs = gen_events(SINGLE_EVENTS, &mut heads, &mut rng, "s");
    let t = Instant::now();
    for chunk in evs.chunks(1) {
        engine.commit(chunk)?;
    }
    let single_eps = SINGLE_EVENTS as f64 / t.elapsed().as_secs_f64();

    let mut lat = Vec::with_capacity(READS);
    for _ in 0..READS {
        let room = room_name((rng.next() % ROOMS as u64) as usize);
        let t = Instant::now();
        let n = engine.latest(&room)?;
        lat.push(t.elapsed());
        if n != PAGE {
            return Err(format!("{room}: read {n} events, expected {PAGE}").into());
        }
    }
    lat.sort_unstable();
    Ok(Row {
        name: engine.name(),
        group_eps,
        single_eps,
        p50: lat[READS / 2],
        p99: lat[READS * 99 / 100],
        disk: dir_size(dir),
    })
}

fn main() -> Res<()> {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let want = |n: &str| which.is_empty() || which.iter().any(|w| w == n);
    let mut rows = Vec::new();
    if want("fjall") {
        let dir = tempfile::tempdir_in(".")?;
        let mut e = Fjall::open(dir.path())?;
        rows.push(run(&mut e, dir.path())?);
    }
    if want("redb") {
        let dir = tempfile::tempdir_in(".")?;
        let mut e = Redb::open(dir.path())?;
        rows.push(run(&mut e, dir.path())?);
    }
    println!(
        "| engine | append, batches of {GROUP} (events/s) | append, batches of 1 (events/s) | latest-{PAGE} read p50 | p99 | disk after |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} µs | {:.1} µs | {:.1} MiB |",
            r.name,
            r.group_eps,
            r.single_eps,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.disk as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
