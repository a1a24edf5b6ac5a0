use super::*;
use std::sync::Arc;

fn authz() -> Authorizer {
    let access = Arc::new(Access::new());
    access.set_member("r1", "alice", true);
    access.set_member("r1", "bob", true);
    access.set_member("r2", "carol", true);
    access.set_open("news", true);
    Authorizer::new("chat", true, access)
}

fn alice() -> Principal {
    Principal::User("alice".into())
}

#[test]
fn publish_rules() {
    let a = authz();
    let p = alice();
    assert!(a.check_publish(&p, "chat/rooms/r1/send/alice").allowed());
    assert!(
        a.check_publish(&p, "chat/rooms/r9/send/alice").allowed(),
        "bridge checks membership"
    );
    assert!(!a.check_publish(&p, "chat/rooms/r1/send/bob").allowed());
    assert!(a.check_publish(&p, "chat/rooms/r1/typing/alice").allowed());
    assert!(!a.check_publish(&p, "chat/rooms/r2/typing/alice").allowed());
    assert!(a.check_publish(&p, "chat/rpc/alice/history").allowed());
    assert!(!a.check_publish(&p, "chat/rpc/bob/history").allowed());
    assert!(!a.check_publish(&p, "chat/rooms/r1/events").allowed());
    assert!(!a.check_publish(&p, "chat/users/alice/inbox").allowed());
    assert!(!a.check_publish(&p, "chat/presence/alice").allowed());
    assert!(a.check_publish(&p, "devices/d1/temp").allowed());
    assert!(!a.check_publish(&p, "$SYS/x").allowed());
}

#[test]
fn subscribe_rules() {
    let a = authz();
    let p = alice();
    let ok = |f: &str| a.check_subscribe(&p, "phone-1", f).allowed();
    assert!(ok("chat/rooms/r1/events"));
    assert!(ok("chat/rooms/news/events"), "open channel");
    assert!(ok("chat/rooms/r1/typing/+"));
    assert!(ok("chat/rooms/r1/receipts"));
    assert!(ok("chat/users/alice/replies/phone-1"));
    assert!(ok("chat/users/alice/inbox"));
    assert!(ok("chat/presence/bob"));
    assert!(ok("devices/#"));
    for bad in [
        "#",
        "+/rooms/r1/events",
        "chat/#",
        "chat/rooms/+/events",
        "chat/rooms/r2/events",
        "chat/rooms/r2/typing/+",
        "chat/rooms/r1/#",
        "chat/rooms/r1/send/+",
        "chat/users/bob/inbox",
        "chat/users/alice/replies/other",
        "chat/users/alice/replies/+",
        "chat/users/bob/replies/phone-1",
        "chat/presence/carol",
        "chat/presence/+",
        "chat/rpc/alice/+",
        "chat/a#",
        "$SYS/#",
    ] {
        assert!(!ok(bad), "{bad} must be refused");
    }
}

#[test]
fn delivery_follows_membership() {
    let a = authz();
    let p = alice();
    assert!(a.may_deliver(&p, "chat/rooms/r1/events"));
    a.access().set_member("r1", "alice", false);
    assert!(!a.may_deliver(&p, "chat/rooms/r1/events"));
    assert!(!a.may_deliver(&p, "chat/presence/bob"));
}

/// A loader over a fixed set of rooms that counts its calls.
fn counting_loader(
    rooms: &'static [&'static str],
) -> (Loader, Arc<std::sync::atomic::AtomicUsize>) {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let loader: Loader = Arc::new(move |room: String| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            match room.as_str() {
                "broken" => Err("store down".to_string()),
                r if rooms.contains(&r) => Ok(Some((false, vec!["alice".to_string()]))),
                _ => Ok(None),
            }
        })
    });
    (loader, calls)
}

#[tokio::test]
async fn misses_are_remembered_until_the_room_is_created() {
    let access = Access::new();
    let (loader, calls) = counting_loader(&["r1"]);
    access.set_loader(loader);
    let mut budget = LoadBudget::new(100);
    let calls = || calls.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(access.ensure("r1", &mut budget).await, Ensured::Found);
    assert_eq!(access.ensure("r1", &mut budget).await, Ensured::Known);
    assert!(access.is_member("r1", "alice"));
    assert_eq!(access.ensure("nope", &mut budget).await, Ensured::Missing);
    for _ in 0..50 {
        assert_eq!(
            access.ensure("nope", &mut budget).await,
            Ensured::CachedMiss
        );
    }
    assert_eq!(calls(), 2, "one read per room");
    // created through the bridge (the sink in one process, the
    // access hook when split: both call set_member / set_open)
    access.set_member("nope", "bob", true);
    assert!(access.is_member("nope", "bob"), "usable at once");
    assert_ne!(
        access.ensure("nope", &mut budget).await,
        Ensured::CachedMiss
    );
    assert_eq!(access.ensure("chan", &mut budget).await, Ensured::Missing);
    access.set_open("chan", true);
    assert!(access.can_read("chan", "anyone"));
    assert_ne!(
        access.ensure("chan", &mut budget).await,
        Ensured::CachedMiss
    );
    // a failed read is not remembered
    assert_eq!(access.ensure("broken", &mut budget).await, Ensured::Failed);
    assert_eq!(access.ensure("broken", &mut budget).await, Ensured::Failed);
}

#[tokio::test]
async fn loads_are_rated_per_budget() {
    let access = Access::new();
    let (loader, calls) = counting_loader(&[]);
    access.set_loader(loader);
    let mut hostile = LoadBudget::new(1);
    let mut outcomes = Vec::new();
    for i in 0..20 {
        outcomes.push(access.ensure(&format!("ghost-{i}"), &mut hostile).await);
    }
    let made = outcomes.iter().filter(|o| **o == Ensured::Missing).count();
    // a burst of 2 (and a third if the test took over a second)
    assert!((2..=3).contains(&made), "{outcomes:?}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), made);
    // another connection's budget is its own
    let mut other = LoadBudget::new(1);
    assert_eq!(access.ensure("ghost-x", &mut other).await, Ensured::Missing);
}

#[tokio::test]
async fn no_loader_no_reads() {
    let access = Access::new();
    let mut budget = LoadBudget::new(1);
    for _ in 0..5 {
        assert_eq!(access.ensure("r", &mut budget).await, Ensured::Known);
    }
}

#[test]
fn only_membership_rules_name_a_room_to_load() {
    let a = authz();
    assert_eq!(
        a.membership_room("chat/rooms/r1/typing/alice", true),
        Some("r1")
    );
    assert_eq!(a.membership_room("chat/rooms/r1/send/alice", true), None);
    assert_eq!(a.membership_room("chat/rooms/r1/events", true), None);
    assert_eq!(a.membership_room("chat/rooms/r1/events", false), Some("r1"));
    assert_eq!(
        a.membership_room("chat/rooms/r1/receipts", false),
        Some("r1")
    );
    assert_eq!(
        a.membership_room("chat/rooms/r1/typing/+", false),
        Some("r1")
    );
    assert_eq!(a.membership_room("chat/rooms/r1/send/+", false), None);
    assert_eq!(a.membership_room("chat/rooms/+/events", false), None);
    assert_eq!(a.membership_room("dev/rooms/r1/events", false), None);
    assert!(a.is_typing("chat/rooms/r1/typing/+"));
    assert!(!a.is_typing("chat/rooms/r1/events"));
    assert!(!a.is_typing("dev/rooms/r1/typing/x"));
    assert!(a.in_namespace("chat/rooms/r1/send/alice"));
    assert!(!a.in_namespace("chatter/x"));
    assert!(!a.in_namespace("dev/x"));
}

#[test]
fn user_topics_reach_their_user_only() {
    let a = authz();
    let p = alice();
    assert!(a.may_deliver(&p, "chat/users/alice/inbox"));
    assert!(a.may_deliver(&p, "chat/users/alice/replies/alice-1"));
    assert!(!a.may_deliver(&p, "chat/users/bob/inbox"));
    assert!(!a.may_deliver(&p, "chat/users/bob/replies/bob-1"));
}

#[test]
fn service_patterns() {
    assert!(covers("chat/#", "chat/rooms/+/send/+"));
    assert!(covers("chat/rooms/+/send/+", "chat/rooms/+/send/+"));
    assert!(!covers("chat/rooms/+/send/+", "chat/rooms/#"));
    assert!(!covers("chat/hooks/#", "chat/rooms/r1/events"));
    assert!(covers("chat/hooks/#", "chat/hooks"));
    assert!(!covers("a/+", "a/b/c"));
}
