//! Connecting the load's users and, on the chat path, creating its rooms
//! over MQTT the way a client would: `rooms.create` by the room's first
//! publisher with everyone else invited, then `rooms.join` by each invitee,
//! then SUBSCRIBE to the room's events.

use crate::client::{Conn, ConnOpts, Target};
use crate::load::LoadParams;
use crate::spawn_all;
use anyhow::Result;
use serde_json::json;

/// Connects publishers `p{i}` and subscribers `s{i}`; on the chat path makes
/// them members of their rooms; subscribes the subscribers to their room.
/// Returns (publishers, subscribers), each ready to be handed to a reader.
pub async fn users(
    target: &Target,
    chat: bool,
    p: &LoadParams,
    opts: ConnOpts,
) -> Result<(Vec<Conn>, Vec<Conn>)> {
    let connect = |prefix: &'static str, n: usize| {
        spawn_all((0..n).map(move |i| {
            let target = target.clone();
            async move {
                let user = format!("{prefix}{i}");
                let mut c = Conn::login(&target, &user, &user, opts).await?;
                if chat {
                    c.subscribe(&[c.reply_topic()]).await?;
                }
                Ok(c)
            }
        }))
    };
    let mut pubs = connect("p", p.publishers).await?;
    let mut subs = connect("s", p.subscribers).await?;
    if let (true, Some(extra)) = (chat, p.channel_members) {
        return channel(target, pubs, subs, p, extra, opts).await;
    }
    if chat {
        // publisher r (r < rooms) owns room r
        for r in 0..p.rooms {
            let members: Vec<String> = pubs
                .iter()
                .chain(&subs)
                .filter(|c| c.user != pubs[r].user && member_of(&c.user, r, p.rooms))
                .map(|c| c.user.clone())
                .collect();
            pubs[r]
                .call(
                    "rooms.create",
                    json!({"room": format!("r{r}"), "kind": "group", "members": members}),
                )
                .await?;
        }
        // One after another: concurrent requests of different users make the
        // bridge acknowledge out of order, which drops its connection (a
        // server bug the load scenarios measure; setup should not trip on it).
        let invitees = pubs.split_off(p.rooms.min(pubs.len()));
        let n_invited_pubs = invitees.len();
        let mut joined = Vec::new();
        for mut c in invitees.into_iter().chain(subs) {
            let room = room_of_user(&c.user, p.rooms);
            c.call("rooms.join", json!({"room": format!("r{room}")}))
                .await?;
            joined.push(c);
        }
        subs = joined.split_off(n_invited_pubs);
        pubs.extend(joined);
    }
    let subs = spawn_all(subs.into_iter().map(|mut c| {
        let rooms = p.rooms;
        async move {
            let room = room_of_user(&c.user, rooms);
            let topic = if chat {
                format!("chat/rooms/r{room}/events")
            } else {
                format!("bench/rooms/r{room}")
            };
            c.subscribe(&[topic]).await?;
            Ok(c)
        }
    }))
    .await?;
    Ok((pubs, subs))
}

/// One channel `r0`, owned by `p0`: every other publisher and subscriber
/// joins it, and `extra` more users `c{i}` join it over their
/// own connections (closed again: members who are offline), 100 at a time.
async fn channel(
    target: &Target,
    mut pubs: Vec<Conn>,
    subs: Vec<Conn>,
    p: &LoadParams,
    extra: usize,
    opts: ConnOpts,
) -> Result<(Vec<Conn>, Vec<Conn>)> {
    let Some(owner) = pubs.first_mut() else {
        anyhow::bail!("a channel needs a publisher");
    };
    owner
        .call("rooms.create", json!({"room": "r0", "kind": "channel"}))
        .await?;
    let ids: Vec<usize> = (0..extra).collect();
    for chunk in ids.chunks(100) {
        spawn_all(chunk.iter().map(|&i| {
            let target = target.clone();
            async move {
                let user = format!("c{i}");
                let mut c = Conn::login(&target, &user, &user, opts).await?;
                c.subscribe(&[c.reply_topic()]).await?;
                c.call("rooms.join", json!({"room": "r0"})).await?;
                Ok(())
            }
        }))
        .await?;
    }
    let mut joined = Vec::new();
    for mut c in pubs.drain(1..).chain(subs) {
        c.call("rooms.join", json!({"room": "r0"})).await?;
        joined.push(c);
    }
    let n_pubs = p.publishers.saturating_sub(1);
    let rest = joined.split_off(n_pubs.min(joined.len()));
    pubs.extend(joined);
    let subs = spawn_all(rest.into_iter().map(|mut c| async move {
        c.subscribe(&["chat/rooms/r0/events".to_string()]).await?;
        Ok(c)
    }))
    .await?;
    Ok((pubs, subs))
}

/// The room of user `p{i}` / `s{i}`: i mod rooms.
fn room_of_user(user: &str, rooms: usize) -> usize {
    user[1..].parse::<usize>().unwrap_or(0) % rooms
}

fn member_of(user: &str, room: usize, rooms: usize) -> bool {
    room_of_user(user, rooms) == room
}
