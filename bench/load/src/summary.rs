//! Judging a [`Report`]: the targets with their gaps, the generator check,
//! and the Markdown the README shows.

use crate::report::{LoadResult, Report, Target};
use std::fmt::Write;

/// Scenario names used by `all`; the targets look results up by them.
pub const RAW: &str = "raw pass-through, chatmq";
pub const CHAT: &str = "chat path, chatmq";
pub const MOSQUITTO: &str = "raw pass-through, mosquitto";
pub const CHAT_ONE_ROOM: &str = "chat path, chatmq, all in 1 room";
/// The chat path on the ScyllaDB store (`--cql`), beside [`CHAT`] on the embedded one.
pub const CHAT_CQL: &str = "chat path, chatmq, ScyllaDB store (CQL node on this machine)";

/// Name of a cluster run.
pub fn cluster_name(brokers: usize, bridges: u32) -> String {
    format!("chat path, cluster of {brokers} broker(s) + {bridges} bridge(s), ScyllaDB store")
}

/// Name of a fixed-rate run.
pub fn fixed_name(rate: f64, rooms: usize) -> String {
    format!("chat path, chatmq, {rate:.0} msgs/s offered, {rooms} room(s)")
}

/// The `channel` scenario's channel run.
pub fn channel_name(members: usize, online: usize, rate: f64) -> String {
    format!("channel of {members} members, {online} online, {rate:.0} msgs/s offered")
}

/// The `channel` scenario's baseline: a channel of the online members only.
pub fn channel_online_name(online: usize, rate: f64) -> String {
    format!("channel of {online} members, all online, {rate:.0} msgs/s offered")
}

/// Server CPU time per published message, microseconds.
fn cpu_us_per_msg(l: &LoadResult) -> Option<f64> {
    (l.published_per_s > 0.0).then(|| l.server_cpu_pct / 100.0 / l.published_per_s * 1e6)
}

fn find<'a>(r: &'a Report, name: &str) -> Option<&'a LoadResult> {
    r.load.iter().find(|l| l.name == name)
}

fn target(what: &str, goal: &str, measured: Option<(String, bool, String)>) -> Target {
    match measured {
        Some((m, met, gap)) => Target {
            what: what.into(),
            goal: goal.into(),
            measured: m,
            met: Some(met),
            gap: if met { "met".into() } else { gap },
        },
        None => Target {
            what: what.into(),
            goal: goal.into(),
            measured: "not measured".into(),
            met: None,
            gap: "-".into(),
        },
    }
}

/// A throughput ratio target: `num / den >= goal`.
fn ratio(
    num: Option<&LoadResult>,
    den: Option<&LoadResult>,
    goal: f64,
) -> Option<(String, bool, String)> {
    let (n, d) = (num?.delivered_per_s, den?.delivered_per_s);
    if d <= 0.0 {
        return None;
    }
    let r = n / d;
    let need = goal / r.max(1e-9);
    Some((
        format!("{:.1} %", 100.0 * r),
        r >= goal,
        format!(
            "{:.1} points short: chat needs {need:.1}x its throughput",
            100.0 * (goal - r)
        ),
    ))
}

/// Below-a-ceiling target.
fn below(v: Option<f64>, goal: f64, unit: &str) -> Option<(String, bool, String)> {
    let v = v?;
    Some((
        format!("{v:.2} {unit}"),
        v < goal,
        format!("{:.2} {unit} over ({:.1}x the goal)", v - goal, v / goal),
    ))
}

/// The product's targets, evaluated on what the report holds.
pub fn targets(r: &Report) -> Vec<Target> {
    let (raw, chat, mosq) = (find(r, RAW), find(r, CHAT), find(r, MOSQUITTO));
    let fixed = r.fixed_rate.first();
    let rate = fixed.and_then(|f| f.offered_per_s).unwrap_or(5000.0);
    vec![
        target(
            "chat path vs raw pass-through (delivered msg/s)",
            ">= 50 %",
            ratio(chat, raw, 0.5),
        ),
        target(
            "chat path vs Mosquitto raw pass-through",
            ">= 100 %",
            ratio(chat, mosq, 1.0),
        ),
        target(
            &format!("chat p99 latency at {rate:.0} events/s"),
            "< 10 ms",
            below(fixed.map(|f| f.latency.p99_ms), 10.0, "ms"),
        ),
        target(
            "history latest-50 p99 (room of 1M events)",
            "< 5 ms",
            below(r.history.as_ref().map(|h| h.latest50.p99_ms), 5.0, "ms"),
        ),
        target(
            "server memory per idle connection",
            "<= 16 KiB",
            below(
                r.connections.as_ref().map(|c| c.rss_per_conn_kib),
                16.0 + 1e-9,
                "KiB",
            ),
        ),
        target(
            "reconnect storm: all caught up, 0 errors",
            "<= 3 s",
            r.connections.as_ref().map(|c| {
                let s = &c.storm;
                let (v, goal) = (s.all_caught_up_seconds, 3.0);
                let complete = s.caught_up == s.clients && s.errors == 0;
                (
                    format!("{v:.2} s, {} errors", s.errors),
                    complete && v <= goal,
                    format!("{:.2} s over ({:.1}x the goal)", v - goal, v / goal),
                )
            }),
        ),
        target(
            "reconnect storm rate vs Mosquitto's",
            ">= 0.5x",
            r.connections
                .as_ref()
                .and_then(|c| c.mosquitto_storm.as_ref())
                .map(|m| {
                    let v = m.chatmq_rate_ratio;
                    (
                        format!("{v:.2}x"),
                        v >= 0.5,
                        format!("{:.2}x short", 0.5 - v),
                    )
                }),
        ),
    ]
}

/// Whether the load generator could be what limits the closed-loop numbers.
pub fn generator_notes(r: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    let best = r
        .load
        .iter()
        .max_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s));
    if let Some(b) = best {
        notes.push(format!(
            "Generator check: the same rumqttc generator delivered {:.0} msg/s against `{}` (bench process {:.0} % CPU), \
             so scenarios below that rate are not capped by the generator's throughput.",
            b.delivered_per_s, b.name, b.bench_cpu_pct
        ));
    }
    let cores = r.machine.nproc as f64 * 100.0;
    for l in &r.load {
        let total = l.server_cpu_pct + l.bench_cpu_pct + l.other_cpu_pct;
        if total > 0.85 * cores {
            notes.push(format!(
                "`{}`: server {:.0} % + generator {:.0} % + other processes {:.0} % of {:.0} % CPU: \
                 the machine is saturated, so the server got only what the generator and the rest left it.",
                l.name, l.server_cpu_pct, l.bench_cpu_pct, l.other_cpu_pct, cores
            ));
        }
    }
    notes
}

fn row(s: &mut String, l: &LoadResult) {
    let offered = l
        .offered_per_s
        .map_or("max".to_string(), |r| format!("{r:.0}/s"));
    let _ = writeln!(
        s,
        "| {} | {}/{}/{} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
        l.name,
        l.publishers,
        l.subscribers,
        l.rooms,
        offered,
        l.delivered_per_s,
        l.latency.p50_ms,
        l.latency.p99_ms,
        l.latency.p999_ms,
        l.server_cpu_pct,
        l.server_peak_rss_mib,
        l.bench_cpu_pct,
        l.other_cpu_pct,
        l.undelivered
    );
}

/// One line per scenario whose server logged warnings or errors.
pub fn log_notes(r: &Report) -> Vec<String> {
    let storm = r
        .connections
        .as_ref()
        .map(|c| ("history, connections, storm", &c.storm.server_log));
    r.load
        .iter()
        .chain(&r.fixed_rate)
        .map(|l| (l.name.as_str(), &l.server_log))
        .chain(storm)
        .filter(|(_, log)| !log.is_empty())
        .map(|(name, log)| {
            let kinds: Vec<String> = log.iter().map(|(k, n)| format!("{n} x `{k}`")).collect();
            format!("`{name}`: server log: {}", kinds.join("; "))
        })
        .collect()
}

/// The Markdown tables of a report.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} cores ({}), {:.0} GiB RAM, Linux {}; load average {} at the start, {} at the end; store fsync `{}`.\n",
        m.nproc, m.cpu, m.ram_gib, m.kernel, r.loadavg_start, r.loadavg_end, r.fsync
    );
    if let Some(l) = r.load.first().or(r.fixed_rate.first()) {
        let _ = writeln!(
            s,
            "Pub/sub load: {:.0} deliveries per publish, {}-byte payloads, QoS 1; `max` = closed loop with {} messages \
             in flight per publisher, `N/s` = fixed offered rate; {:.0} s measured after warm-up. \
             Latency is publish -> delivery (from the scheduled send time at a fixed rate). \
             CPU is % of one core over the measured window; `other` is everything else running on the machine \
             meanwhile (noise).\n",
            l.fanout, l.payload_bytes, l.window.unwrap_or(0), l.seconds
        );
    }
    s.push_str("| scenario | pubs/subs/rooms | offered | delivered msg/s | p50 ms | p99 ms | p99.9 ms | server CPU % | server peak RSS MiB | generator CPU % | other CPU % | undelivered |\n");
    s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in r.load.iter().chain(&r.fixed_rate) {
        row(&mut s, l);
    }
    let channel = r
        .fixed_rate
        .iter()
        .find(|l| l.name.starts_with("channel of ") && !l.name.contains("all online"));
    let group = r
        .fixed_rate
        .iter()
        .find(|l| l.name.starts_with("channel of ") && l.name.contains("all online"));
    if let (Some(c), Some(g)) = (channel, group) {
        if let (Some(cc), Some(gc)) = (cpu_us_per_msg(c), cpu_us_per_msg(g)) {
            let _ = writeln!(
                s,
                "\nCost per message in a large channel (server CPU per message published, \
                 side by side in this run): **{cc:.0} µs** in the `{}` run, {gc:.0} µs in the \
                 `{}` run ({:.2}x; each message is delivered to the same online members in both). \
                 p99 to every online member {:.1} ms vs {:.1} ms. Peak RSS includes the setup's \
                 connections of every member.",
                c.name,
                g.name,
                cc / gc.max(f64::MIN_POSITIVE),
                c.latency.p99_ms,
                g.latency.p99_ms
            );
        }
    }
    if let Some(h) = &r.history {
        let _ = writeln!(
            s,
            "\n| history and catch-up | p50 ms | p99 ms |\n|---|---:|---:|\n\
             | `history` latest 50, room of {} events | {:.2} | {:.2} |\n\
             | `history` page of 1000 ({} KiB reply) | {:.2} | {:.2} |\n\
             | catch-up: `sync` of {} missed events across {} rooms ({} requests), wall time | {:.1} | - |",
            h.room_events, h.latest50.p50_ms, h.latest50.p99_ms,
            h.page1000_bytes / 1024, h.page1000.p50_ms, h.page1000.p99_ms,
            h.catchup.missed_events, h.catchup.rooms, h.catchup.requests, h.catchup.wall_ms
        );
    }
    if let Some(c) = &r.connections {
        let st = &c.storm;
        let _ = writeln!(
            s,
            "\n| connections | result |\n|---|---|\n\
             | idle authenticated connections | {} of {} in {:.1} s |\n\
             | server RSS per idle connection | {:.1} KiB ({:.0} -> {:.0} MiB) |\n\
             | reconnect storm: all {} reconnect + `sync` ({} missed events each) | {} caught up in {:.1} s; per client p50 {:.0} ms, p99 {:.0} ms |\n\
             | storm errors | {} errors in {} attempts {:?} |",
            c.connected, c.target, c.connect_seconds,
            c.rss_per_conn_kib, c.rss_before_mib, c.rss_after_mib,
            st.clients, st.missed_per_client, st.caught_up, st.all_caught_up_seconds,
            st.per_client.p50_ms, st.per_client.p99_ms,
            st.errors, st.attempts, st.error_kinds
        );
        if let Some(m) = &c.mosquitto_storm {
            let _ = writeln!(
                s,
                "| the same storm against Mosquitto (connect + the same subscriptions, no `sync`) | {} of {} subscribed in {:.1} s |\n\
                 | chatmq's storm rate / Mosquitto's | {:.2}x |",
                m.subscribed, m.clients, m.all_subscribed_seconds, m.chatmq_rate_ratio
            );
        }
    }
    s.push_str("\n| target | goal | measured | met | gap |\n|---|---|---|---|---|\n");
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            t.what, t.goal, t.measured, met, t.gap
        );
    }
    if !r.notes.is_empty() || !r.errors.is_empty() {
        s.push('\n');
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
        for e in &r.errors {
            let _ = writeln!(s, "- **failed**: {e}");
        }
    }
    let _ = writeln!(s, "\nCommand: `{}`", r.command);
    s
}
